/*
 * dvidfs.formats._labelblock: one plane of a DVID compressed label block, in C.
 *
 * Why native: a label slice decodes one plane from each block it crosses.
 * The numpy decoder (labelblock.decode_label_plane) takes ~50 us per 64^3
 * block, mostly fixed costs of small array operations; this loop takes a few
 * microseconds and runs with the GIL released.
 *
 * It is a fast path only.  The format is documented in labelblock.py; this
 * code decodes well-formed blocks and answers False for anything it does not
 * fully accept (bad header, truncation, counts over 512, an index or packed
 * value out of range, k outside the block, a plane of another shape).  The
 * caller then runs the Python decoder, which either decodes the block (its
 * leniencies) or raises the precise error, so both paths give the same result.
 *
 * Concurrency: pure C on buffers held for the call; any number of threads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "rd64 reads little-endian labels with memcpy: a big-endian host needs a byte swap"
#endif

#define SUB 8
#define MAX_SB_PER_AXIS 128
#define MAX_LABELS_PER_SB 512

static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t rd64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8); /* little-endian host (x86-64, aarch64) */
    return v;
}

static int bits_for(uint32_t n) {
    int b = 0;
    if (n < 2) return 0;
    for (uint32_t v = n - 1; v; v >>= 1) b++;
    return b;
}

/* 1: plane decoded into out; 0: let the Python decoder handle this block. */
static int decode_plane(const uint8_t *d, Py_ssize_t len, int axis, Py_ssize_t k, uint64_t *out,
                        Py_ssize_t out_rows, Py_ssize_t out_cols) {
    if (len < 16 || axis < 0 || axis > 2) return 0;
    uint32_t g[3] = {rd32(d), rd32(d + 4), rd32(d + 8)}; /* x, y, z */
    uint32_t n = rd32(d + 12);
    for (int a = 0; a < 3; a++)
        if (g[a] == 0 || g[a] > MAX_SB_PER_AXIS) return 0;
    if (n == 0 || 16 + 8 * (uint64_t)n > (uint64_t)len) return 0;
    if (k < 0 || k >= (Py_ssize_t)(SUB * g[axis])) return 0;
    static const int rows_of[3] = {2, 2, 1}, cols_of[3] = {1, 0, 0}; /* yz: (z, y); xz: (z, x); xy: (y, x) */
    int row = rows_of[axis], col = cols_of[axis];
    Py_ssize_t nrows = SUB * (Py_ssize_t)g[row], ncols = SUB * (Py_ssize_t)g[col];
    if (out_rows != nrows || out_cols != ncols) return 0; /* a block of another shape */
    const uint8_t *labels = d + 16;
    if (n == 1) {
        uint64_t v = rd64(labels);
        for (Py_ssize_t i = 0; i < nrows * ncols; i++) out[i] = v;
        return 1;
    }
    uint64_t nsb = (uint64_t)g[0] * g[1] * g[2];
    uint64_t pos = 16 + 8 * (uint64_t)n;
    if (pos + 2 * nsb > (uint64_t)len) return 0;
    const uint8_t *counts = d + pos;
    pos += 2 * nsb;
    /* per sub-block: start of its index list, byte offset of its packed values */
    uint64_t *idx_start = malloc(nsb * sizeof(uint64_t)), *val_off = malloc(nsb * sizeof(uint64_t));
    int ok = 0;
    if (idx_start == NULL || val_off == NULL) goto done;
    uint64_t nidx = 0, total = 0;
    for (uint64_t i = 0; i < nsb; i++) {
        uint32_t c = (uint32_t)counts[2 * i] | (uint32_t)counts[2 * i + 1] << 8;
        if (c > MAX_LABELS_PER_SB) goto done;
        idx_start[i] = nidx;
        val_off[i] = total;
        nidx += c;
        total += (uint64_t)bits_for(c) * (SUB * SUB * SUB / 8);
    }
    if (pos + 4 * nidx > (uint64_t)len) goto done;
    const uint8_t *indices = d + pos;
    for (uint64_t i = 0; i < nidx; i++)
        if (rd32(indices + 4 * i) >= n) goto done;
    pos += 4 * nidx;
    if (pos + total > (uint64_t)len) goto done;
    const uint8_t *raw = d + pos;

    uint32_t s[3], v[3];
    s[axis] = (uint32_t)(k / SUB);
    v[axis] = (uint32_t)(k % SUB);
    for (uint32_t R = 0; R < g[row]; R++) {
        for (uint32_t C = 0; C < g[col]; C++) {
            s[row] = R;
            s[col] = C;
            uint64_t sb = ((uint64_t)s[2] * g[1] + s[1]) * g[0] + s[0];
            uint32_t cnt = (uint32_t)counts[2 * sb] | (uint32_t)counts[2 * sb + 1] << 8;
            int b = bits_for(cnt);
            const uint8_t *vals = raw + val_off[sb];
            uint64_t vals_len = (uint64_t)b * (SUB * SUB * SUB / 8);
            for (uint32_t r = 0; r < SUB; r++) {
                uint64_t *o = out + ((Py_ssize_t)R * SUB + r) * ncols + (Py_ssize_t)C * SUB;
                for (uint32_t c = 0; c < SUB; c++) {
                    uint64_t label = 0;
                    if (cnt > 0) {
                        uint32_t value = 0;
                        if (b > 0) {
                            v[row] = r;
                            v[col] = c;
                            uint32_t vi = (v[2] * SUB + v[1]) * SUB + v[0];
                            uint64_t bit = (uint64_t)vi * b;
                            uint64_t byte = bit >> 3;
                            /* values are <= 9 bits, MSB-first: they fit the 16-bit window at their first byte */
                            uint32_t w = (uint32_t)vals[byte] << 8 | (byte + 1 < vals_len ? vals[byte + 1] : 0);
                            value = (w >> (16 - (bit & 7) - b)) & ((1u << b) - 1);
                            if (value >= cnt) goto done;
                        }
                        label = rd64(labels + 8 * (uint64_t)rd32(indices + 4 * (idx_start[sb] + value)));
                    }
                    o[c] = label;
                }
            }
        }
    }
    ok = 1;
done:
    free(idx_start);
    free(val_off);
    return ok;
}

PyDoc_STRVAR(plane_doc,
"plane(data, axis, k, out, rows, cols) -> bool\n\n"
"Decode plane k along axis (0 = x, 1 = y, 2 = z) of the DVID label block in\n"
"data into out, a writable C-contiguous uint64 buffer of rows x cols, which\n"
"must be the plane's shape (yz: (nz, ny), xz: (nz, nx), xy: (ny, nx)).\n"
"Returns False, leaving out\n"
"unspecified, for any block this fast path does not fully accept: the caller\n"
"then decodes it with labelblock.decode_label_plane.");

static PyObject *plane(PyObject *self, PyObject *args) {
    Py_buffer data, out;
    int axis;
    Py_ssize_t k;
    Py_ssize_t rows, cols;
    if (!PyArg_ParseTuple(args, "y*inw*nn", &data, &axis, &k, &out, &rows, &cols)) return NULL;
    int ok = 0;
    if (PyBuffer_IsContiguous(&out, 'C') && rows > 0 && cols > 0 && out.len == rows * cols * 8) {
        Py_BEGIN_ALLOW_THREADS
        ok = decode_plane(data.buf, data.len, axis, k, out.buf, rows, cols);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    return PyBool_FromLong(ok);
}

static PyMethodDef methods[] = {
    {"plane", plane, METH_VARARGS, plane_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_labelblock", "One plane of a DVID label block, in C (see labelblock.py).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__labelblock(void) { return PyModule_Create(&module); }
