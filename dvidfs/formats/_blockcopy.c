/*
 * dvidfs.formats._blockcopy: decode stored blocks and copy sub-boxes of them
 * into a destination array, many blocks per call, with the GIL released.
 *
 * Why native: a 1024^2 slice crosses 1,024 blocks of 32^3.  In Python each
 * block costs a few microseconds of interpreter time *holding the GIL* (header
 * parse, lz4 call, numpy slicing).  Here the Python side only collects
 * (value, block coordinate) tuples; this module validates them all with the
 * GIL held, works out where each block's part of the box goes, then releases
 * the GIL for the whole batch of decoding and copying.
 *
 * A stored value is DVID's encoding (dvidfs/store/values.py): one header byte
 * (compression << 5 | checksum << 3), then the payload.  Handled here: no
 * compression (0x00) and lz4 (0x80: uint32 LE uncompressed size, then an lz4
 * block), both without checksum.  Anything else is rejected up front with
 * CorruptBlock; callers decode such rare values in Python and pass the
 * decoded voxels instead.
 *
 * Concurrency: all Python objects are touched only while the GIL is held; the
 * GIL-free part works on raw pointers whose buffers stay acquired (and the
 * objects alive, through the items list the caller holds) until it ends.
 * Several threads may call copy_blocks at once on different destinations.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <lz4.h>
#include <stdint.h>
#include <string.h>

static PyObject *CorruptBlock; /* ValueError subclass: a stored value that does not decode */

#define HDR_NONE 0x00
#define HDR_LZ4 0x80

typedef struct {
    Py_buffer src;
    Py_buffer dest;       /* obj NULL when no destination was given */
    int encoded;
    Py_ssize_t s[3], d[3], n[3]; /* source start, destination start, extent: z, y, x */
} Item;

/* Block coordinate (z, y, x) from DVID's IZYX bytes: big-endian uint32 of the
 * int32 with its sign bit flipped (dvidfs/store/keys.py). */
static void parse_izyx(const unsigned char *b, long long c[3]) {
    for (int a = 0; a < 3; a++) {
        const unsigned char *p = b + 4 * a;
        uint32_t u = ((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]) ^ 0x80000000u;
        c[a] = (long long)(int32_t)u;
    }
}

static void release_items(Item *items, Py_ssize_t count) {
    for (Py_ssize_t i = 0; i < count; i++) {
        PyBuffer_Release(&items[i].src);
        if (items[i].dest.obj != NULL) PyBuffer_Release(&items[i].dest);
    }
}

/* Copy an n[0] x n[1] x n[2] box between two C-ordered arrays of `is`-byte
 * items.  Rows of one item (a yz plane: 1,024 per block) step pointers with a
 * plain loop instead of calling memcpy. */
static void copy_box(char *dst, const Py_ssize_t dshape[3], const char *src, const Py_ssize_t sshape[3],
                     const Py_ssize_t s[3], const Py_ssize_t d[3], const Py_ssize_t n[3], Py_ssize_t is) {
    Py_ssize_t row = n[2] * is;
    Py_ssize_t drow = dshape[2] * is, srow = sshape[2] * is; /* strides of one y step */
    for (Py_ssize_t z = 0; z < n[0]; z++) {
        char *o = dst + (((d[0] + z) * dshape[1] + d[1]) * dshape[2] + d[2]) * is;
        const char *i = src + (((s[0] + z) * sshape[1] + s[1]) * sshape[2] + s[2]) * is;
        if (n[2] == 1 && is == 1) {
            for (Py_ssize_t y = 0; y < n[1]; y++, o += drow, i += srow) *o = *i;
        } else {
            for (Py_ssize_t y = 0; y < n[1]; y++, o += drow, i += srow) memcpy(o, i, row);
        }
    }
}

static int parse_shape(PyObject *seq, Py_ssize_t out[3], const char *what) {
    if (!PyArg_ParseTuple(seq, "nnn", &out[0], &out[1], &out[2])) return -1;
    for (int a = 0; a < 3; a++) {
        if (out[a] <= 0) {
            PyErr_Format(PyExc_ValueError, "%s must be positive", what);
            return -1;
        }
    }
    return 0;
}

PyDoc_STRVAR(copy_blocks_doc,
"copy_blocks(out, box_zyx, block_shape, itemsize, items)\n\n"
"out is a writable C-contiguous buffer holding the box (z0, y0, x0, z1, y1,\n"
"x1) (half-open, voxel coordinates) as [z, y, x] items of itemsize bytes;\n"
"blocks are block_shape (z, y, x).  For each item (src, encoded, dest, izyx):\n"
"izyx is the block's 12-byte coordinate (the end of its key); src holds the\n"
"block (a stored DVID value if encoded, else the raw [z, y, x] voxels); an\n"
"encoded block is also decoded into dest if dest is not None (so the caller\n"
"can cache it); the part of the block inside the box is copied into out.\n"
"Every item is checked before anything is written; a value that fails to\n"
"decode raises CorruptBlock naming the item (out may then be partly written:\n"
"callers discard it).");

static PyObject *copy_blocks(PyObject *self, PyObject *args) {
    PyObject *out_obj, *block_shape_obj, *items_obj;
    Py_ssize_t itemsize;
    long long lo[3], hi[3];
    if (!PyArg_ParseTuple(args, "O(LLLLLL)OnO", &out_obj, &lo[0], &lo[1], &lo[2], &hi[0], &hi[1], &hi[2],
                          &block_shape_obj, &itemsize, &items_obj))
        return NULL;
    Py_ssize_t oshape[3], bshape[3];
    if (parse_shape(block_shape_obj, bshape, "block_shape") < 0) return NULL;
    for (int a = 0; a < 3; a++) {
        if (hi[a] <= lo[a]) {
            PyErr_SetString(PyExc_ValueError, "the box is empty");
            return NULL;
        }
        oshape[a] = (Py_ssize_t)(hi[a] - lo[a]);
    }
    if (itemsize <= 0 || itemsize > 16) {
        PyErr_SetString(PyExc_ValueError, "itemsize must be 1..16");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(items_obj, "items must be a sequence");
    if (seq == NULL) return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);

    Py_buffer out;
    if (PyObject_GetBuffer(out_obj, &out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        Py_DECREF(seq);
        return NULL;
    }
    Py_ssize_t block_bytes = bshape[0] * bshape[1] * bshape[2] * itemsize;
    if (out.len != oshape[0] * oshape[1] * oshape[2] * itemsize) {
        PyErr_Format(PyExc_ValueError, "out has %zd bytes, the box needs %zd", out.len,
                     oshape[0] * oshape[1] * oshape[2] * itemsize);
        goto fail_out;
    }
    Item *items = PyMem_Calloc(count ? count : 1, sizeof(Item));
    if (items == NULL) {
        PyErr_NoMemory();
        goto fail_out;
    }
    Py_ssize_t ready = 0;
    int need_scratch = 0;
    for (; ready < count; ready++) {
        Item *it = &items[ready];
        PyObject *src_obj, *dest_obj;
        const char *izyx;
        Py_ssize_t izyx_len;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, ready), "OpOy#", &src_obj, &it->encoded, &dest_obj,
                              &izyx, &izyx_len))
            goto fail_items;
        if (izyx_len != 12) {
            PyErr_Format(PyExc_ValueError, "item %zd: a block coordinate has 12 bytes, got %zd", ready, izyx_len);
            goto fail_items;
        }
        long long c[3];
        parse_izyx((const unsigned char *)izyx, c);
        for (int a = 0; a < 3; a++) { /* the block's part inside the box, in block and in out coordinates */
            long long origin = c[a] * bshape[a];
            long long a0 = origin > lo[a] ? origin : lo[a];
            long long a1 = origin + bshape[a] < hi[a] ? origin + bshape[a] : hi[a];
            if (a1 <= a0) {
                PyErr_Format(PyExc_ValueError, "item %zd: the block does not touch the box", ready);
                goto fail_items;
            }
            it->s[a] = (Py_ssize_t)(a0 - origin);
            it->d[a] = (Py_ssize_t)(a0 - lo[a]);
            it->n[a] = (Py_ssize_t)(a1 - a0);
        }
        if (PyObject_GetBuffer(src_obj, &it->src, PyBUF_C_CONTIGUOUS) < 0) goto fail_items;
        if (dest_obj != Py_None) {
            if (PyObject_GetBuffer(dest_obj, &it->dest, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
                PyBuffer_Release(&it->src);
                goto fail_items;
            }
            if (it->dest.len != block_bytes) {
                PyErr_Format(PyExc_ValueError, "item %zd: dest has %zd bytes, a block has %zd", ready,
                             it->dest.len, block_bytes);
                ready++;
                goto fail_items;
            }
        }
        if (!it->encoded) {
            if (it->src.len != block_bytes) {
                PyErr_Format(PyExc_ValueError, "item %zd: decoded block has %zd bytes, expected %zd", ready,
                             it->src.len, block_bytes);
                ready++;
                goto fail_items;
            }
            continue;
        }
        const unsigned char *v = it->src.buf;
        if (it->src.len < 1 || (v[0] != HDR_NONE && v[0] != HDR_LZ4)) {
            PyErr_Format(CorruptBlock, "item %zd: value header 0x%02x is not plain or lz4 without checksum",
                         ready, it->src.len ? v[0] : 0);
            ready++;
            goto fail_items;
        }
        if (v[0] == HDR_LZ4 && it->dest.obj == NULL) need_scratch = 1;
    }

    char *scratch = need_scratch ? PyMem_RawMalloc(block_bytes) : NULL;
    if (need_scratch && scratch == NULL) {
        PyErr_NoMemory();
        goto fail_items;
    }
    Py_ssize_t bad = -1;
    const char *why = NULL;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count && bad < 0; i++) {
        Item *it = &items[i];
        const char *block = it->src.buf;
        if (it->encoded) {
            const unsigned char *v = it->src.buf;
            char *target = it->dest.obj != NULL ? it->dest.buf : scratch;
            if (v[0] == HDR_NONE) {
                if (it->src.len - 1 != block_bytes) { bad = i; why = "plain value has the wrong size"; break; }
                block = (const char *)v + 1;
                if (it->dest.obj != NULL) memcpy(target, block, block_bytes);
            } else {
                if (it->src.len < 5) { bad = i; why = "lz4 value is truncated"; break; }
                uint32_t size = (uint32_t)v[1] | (uint32_t)v[2] << 8 | (uint32_t)v[3] << 16 | (uint32_t)v[4] << 24;
                if ((Py_ssize_t)size != block_bytes) { bad = i; why = "lz4 value has the wrong decoded size"; break; }
                int got = LZ4_decompress_safe((const char *)v + 5, target, (int)(it->src.len - 5), (int)block_bytes);
                if (got != block_bytes) { bad = i; why = "lz4 data is corrupt"; break; }
                block = target;
            }
        }
        copy_box(out.buf, oshape, block, bshape, it->s, it->d, it->n, itemsize);
    }
    Py_END_ALLOW_THREADS
    PyMem_RawFree(scratch);
    release_items(items, count);
    PyMem_Free(items);
    PyBuffer_Release(&out);
    Py_DECREF(seq);
    if (bad >= 0) {
        PyErr_Format(CorruptBlock, "item %zd: %s", bad, why);
        return NULL;
    }
    Py_RETURN_NONE;

fail_items:
    release_items(items, count);  /* calloc'd: items never acquired have no buffers */
    PyMem_Free(items);
fail_out:
    PyBuffer_Release(&out);
    Py_DECREF(seq);
    return NULL;
}

static PyMethodDef methods[] = {
    {"copy_blocks", copy_blocks, METH_VARARGS, copy_blocks_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_blockcopy",
    "Decode stored blocks and copy parts of them into an array, GIL released (see blockcopy.py).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__blockcopy(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    CorruptBlock = PyErr_NewException("dvidfs.formats._blockcopy.CorruptBlock", PyExc_ValueError, NULL);
    if (CorruptBlock == NULL || PyModule_AddObjectRef(m, "CorruptBlock", CorruptBlock) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
