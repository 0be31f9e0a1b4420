/* The native data path: the per-message work on DATA, compiled (docs/architecture.md,
 * "The data path").
 *
 * Each function here has a pure twin that stays the specification: wsframe.binary_frame,
 * wsframe.BinarySplitter, wsframe.MaskKeys, wire.data_header, wire.data_stream and
 * wire.data_frame. They
 * must agree byte for byte and raise the same error classes; tests/test_datapath.py feeds
 * both the same random input and holds them to it. wsframe chooses which one runs.
 *
 * Built against the stable ABI of CPython 3.11 where the build's Python is 3.11 or newer
 * (setup.py), so one _datapath.abi3.so serves every later CPython (the Debian package
 * ships one file for Debian 12's 3.11 and 13's 3.13).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define OP_BINARY 0x82 /* FIN + opcode 2, no reserved bits */
#define OP_PING 0x89
#define OP_PONG 0x8A
#define MASK_BIT 0x80
#define DATA_TYPE 4    /* wire.FrameType.DATA */
#define MUX_HEADER 5   /* wire.HEADER_SIZE: type (1) | stream id (4, big-endian) */
/* a held partial frame keeps its buffer below this size, and frees a larger one */
#define KEEP_PENDING 4096
/* the largest buffer reserved at once for a partial frame (a peer's length is a claim) */
#define RESERVE_MAX (1 << 20)

static PyObject *struct_error; /* struct.error: what the pure data_header raises */

/* -- masking ----------------------------------------------------------------------- */

/* dst[i] = src[i] ^ key[(i + shift) % 4], 8 bytes at a time (dst may equal src). */
static void
xor_mask(unsigned char *dst, const unsigned char *src, Py_ssize_t n, const unsigned char *key,
         Py_ssize_t shift)
{
    unsigned char rot[8];
    uint64_t word, k64;
    Py_ssize_t i = 0;
    for (int j = 0; j < 8; j++) {
        rot[j] = key[(j + shift) & 3];
    }
    memcpy(&k64, rot, 8);
    for (; i + 32 <= n; i += 32) {
        for (int j = 0; j < 32; j += 8) {
            memcpy(&word, src + i + j, 8);
            word ^= k64;
            memcpy(dst + i + j, &word, 8);
        }
    }
    for (; i + 8 <= n; i += 8) {
        memcpy(&word, src + i, 8);
        word ^= k64;
        memcpy(dst + i, &word, 8);
    }
    for (; i < n; i++) {
        dst[i] = src[i] ^ rot[i & 7];
    }
}

/* The WebSocket header of a final BINARY frame of `length` bytes; returns its size. */
static Py_ssize_t
write_head(unsigned char *out, uint64_t length, int masked)
{
    unsigned char bit = masked ? MASK_BIT : 0;
    out[0] = OP_BINARY;
    if (length < 126) {
        out[1] = bit | (unsigned char)length;
        return 2;
    }
    if (length < 65536) {
        out[1] = bit | 126;
        out[2] = (unsigned char)(length >> 8);
        out[3] = (unsigned char)length;
        return 4;
    }
    out[1] = bit | 127;
    for (int j = 0; j < 8; j++) {
        out[2 + j] = (unsigned char)(length >> (56 - 8 * j));
    }
    return 10;
}

/* One frame around prefix + payload, masked with key (4 bytes) or not (NULL): [bytes]. */
static PyObject *
build_frame(const unsigned char *prefix, Py_ssize_t plen, const unsigned char *payload,
            Py_ssize_t n, const unsigned char *key)
{
    unsigned char head[14];
    uint64_t length = (uint64_t)plen + (uint64_t)n;
    Py_ssize_t hlen = write_head(head, length, key != NULL);
    if (key != NULL) {
        memcpy(head + hlen, key, 4);
        hlen += 4;
    }
    PyObject *frame = PyBytes_FromStringAndSize(NULL, hlen + plen + n);
    if (frame == NULL) {
        return NULL;
    }
    unsigned char *out = (unsigned char *)PyBytes_AsString(frame);
    memcpy(out, head, hlen);
    if (key == NULL) {
        memcpy(out + hlen, prefix, plen);
        memcpy(out + hlen + plen, payload, n);
    }
    else {
        xor_mask(out + hlen, prefix, plen, key, 0);
        xor_mask(out + hlen + plen, payload, n, key, plen & 3);
    }
    PyObject *list = PyList_New(1);
    if (list == NULL) {
        Py_DECREF(frame);
        return NULL;
    }
    PyList_SetItem(list, 0, frame); /* steals the reference */
    return list;
}

/* The mask key argument: None, or a 4-byte buffer (websockets' apply_mask's error). */
static int
get_key(PyObject *obj, Py_buffer *view)
{
    if (obj == Py_None) {
        view->obj = NULL;
        return 0;
    }
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    if (view->len != 4) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "mask must contain 4 bytes");
        return -1;
    }
    return 1;
}

PyDoc_STRVAR(binary_frame_doc,
             "binary_frame(prefix, payload, mask_key) -> list[bytes]\n\n"
             "wsframe.binary_frame, as one chunk.");

static PyObject *
binary_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer prefix, payload, key;
    PyObject *result = NULL;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "binary_frame() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &prefix, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &payload, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&prefix);
        return NULL;
    }
    int masked = get_key(args[2], &key);
    if (masked >= 0) {
        result = build_frame(prefix.buf, prefix.len, payload.buf, payload.len,
                             masked ? key.buf : NULL);
        if (masked) {
            PyBuffer_Release(&key);
        }
    }
    PyBuffer_Release(&payload);
    PyBuffer_Release(&prefix);
    return result;
}

/* -- the mux DATA header ------------------------------------------------------------ */

/* A stream id as struct's "I" takes it: an integer in 0..2**32-1, else struct.error. */
static int
get_stream_id(PyObject *obj, uint32_t *out)
{
    if (!PyIndex_Check(obj)) {
        PyErr_SetString(struct_error, "required argument is not an integer");
        return -1;
    }
    PyObject *index = PyNumber_Index(obj);
    if (index == NULL) {
        return -1;
    }
    unsigned long long value = PyLong_AsUnsignedLongLong(index);
    Py_DECREF(index);
    if ((value == (unsigned long long)-1 && PyErr_Occurred()) || value > 0xFFFFFFFFULL) {
        PyErr_Clear();
        PyErr_SetString(struct_error, "'I' format requires 0 <= number <= 4294967295");
        return -1;
    }
    *out = (uint32_t)value;
    return 0;
}

static void
write_mux_header(unsigned char *out, uint32_t stream_id)
{
    out[0] = DATA_TYPE;
    out[1] = (unsigned char)(stream_id >> 24);
    out[2] = (unsigned char)(stream_id >> 16);
    out[3] = (unsigned char)(stream_id >> 8);
    out[4] = (unsigned char)stream_id;
}

PyDoc_STRVAR(data_header_doc, "data_header(stream_id) -> bytes\n\nwire.data_header.");

static PyObject *
data_header(PyObject *module, PyObject *arg)
{
    uint32_t stream_id;
    unsigned char out[MUX_HEADER];
    if (get_stream_id(arg, &stream_id) < 0) {
        return NULL;
    }
    write_mux_header(out, stream_id);
    return PyBytes_FromStringAndSize((const char *)out, MUX_HEADER);
}

PyDoc_STRVAR(data_frame_doc,
             "data_frame(stream_id, payload, mask_key) -> list[bytes]\n\n"
             "wire.data_frame: one BINARY frame carrying a DATA message.");

static PyObject *
data_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t stream_id;
    unsigned char header[MUX_HEADER];
    Py_buffer payload, key;
    PyObject *result = NULL;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "data_frame() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    if (get_stream_id(args[0], &stream_id) < 0) {
        return NULL;
    }
    write_mux_header(header, stream_id);
    if (PyObject_GetBuffer(args[1], &payload, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    int masked = get_key(args[2], &key);
    if (masked >= 0) {
        result = build_frame(header, MUX_HEADER, payload.buf, payload.len,
                             masked ? key.buf : NULL);
        if (masked) {
            PyBuffer_Release(&key);
        }
    }
    PyBuffer_Release(&payload);
    return result;
}

PyDoc_STRVAR(data_stream_doc,
             "data_stream(message) -> int\n\n"
             "wire.data_stream: the stream id of a DATA message with a payload, else 0.");

static PyObject *
data_stream(PyObject *module, PyObject *arg)
{
    Py_buffer view;
    uint32_t stream_id = 0;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const unsigned char *p = view.buf;
    if (view.len > MUX_HEADER && p[0] == DATA_TYPE) {
        stream_id = ((uint32_t)p[1] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 8) |
                    (uint32_t)p[4];
    }
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(stream_id);
}

/* -- BinarySplitter ----------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    int expect_mask;
    int active;
    int takes_binary;      /* False when max_size < 0: no BINARY frame is taken */
    uint64_t max_size;
    PyObject *max_size_obj; /* the attribute, as the pure class holds it */
    unsigned char *pending; /* the start of a frame that has not arrived whole */
    Py_ssize_t plen, pcap;
    uint64_t need; /* bytes the pending frame needs in all (0: its header is incomplete) */
} Splitter;

/* The parsed header of the frame at p (avail bytes there), as BinarySplitter._scan reads it. */
typedef struct {
    int first;
    int masked;
    Py_ssize_t head; /* header size, mask key included */
    uint64_t length;
} Head;

/* 1: parsed; 0: the header is not all there yet. */
static int
parse_head(const unsigned char *p, Py_ssize_t avail, Head *h)
{
    if (avail < 2) {
        return 0;
    }
    h->first = p[0];
    uint64_t length = p[1] & 0x7F;
    h->head = 2;
    if (length == 126) {
        if (avail < 4) {
            return 0;
        }
        length = ((uint64_t)p[2] << 8) | p[3];
        h->head = 4;
    }
    else if (length == 127) {
        if (avail < 10) {
            return 0;
        }
        length = 0;
        for (int j = 0; j < 8; j++) {
            length = (length << 8) | p[2 + j];
        }
        h->head = 10;
    }
    h->masked = (p[1] & MASK_BIT) != 0;
    if (h->masked) {
        h->head += 4;
    }
    h->length = length;
    return 1;
}

static int
takes(Splitter *self, const Head *h)
{
    int ours = (h->first == OP_BINARY && self->takes_binary && h->length <= self->max_size) ||
               ((h->first == OP_PING || h->first == OP_PONG) && h->length < 126);
    return ours && h->masked == self->expect_mask;
}

static int
hold(Splitter *self, const unsigned char *data, Py_ssize_t n)
{
    if (self->plen + n > self->pcap) {
        Py_ssize_t cap = self->pcap ? self->pcap : 256;
        while (cap < self->plen + n) {
            cap *= 2;
        }
        if (self->need && (uint64_t)cap < self->need) {
            /* the frame's whole size, as far as a claim may reserve */
            uint64_t want = self->need < RESERVE_MAX ? self->need : RESERVE_MAX;
            if ((uint64_t)cap < want) {
                cap = (Py_ssize_t)want;
            }
        }
        unsigned char *grown = PyMem_Realloc(self->pending, cap);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        self->pending = grown;
        self->pcap = cap;
    }
    memcpy(self->pending + self->plen, data, n);
    self->plen += n;
    return 0;
}

static void
drop_pending(Splitter *self)
{
    self->plen = 0;
    self->need = 0;
    if (self->pcap > KEEP_PENDING) { /* an idle session holds no large buffer */
        PyMem_Free(self->pending);
        self->pending = NULL;
        self->pcap = 0;
    }
}

static int
append_item(PyObject *out, PyObject *flag, PyObject *chunk)
{
    if (chunk == NULL) {
        return -1;
    }
    PyObject *item = PyTuple_Pack(2, flag, chunk);
    Py_DECREF(chunk);
    if (item == NULL) {
        return -1;
    }
    int rc = PyList_Append(out, item);
    Py_DECREF(item);
    return rc;
}

static PyObject *
join_pending(Splitter *self, const void *data, Py_ssize_t n)
{
    PyObject *joined = PyBytes_FromStringAndSize(NULL, self->plen + n);
    if (joined != NULL) {
        char *out = PyBytes_AsString(joined);
        memcpy(out, self->pending, self->plen);
        memcpy(out + self->plen, data, n);
    }
    return joined;
}

/* Cut the frames of buf[pos:end] (held by base) into out, holding any incomplete end. */
static int
scan(Splitter *self, PyObject *base, const unsigned char *buf, Py_ssize_t end, Py_ssize_t pos,
     PyObject *out)
{
    PyObject *view = NULL; /* memoryview(base), made for the first unmasked payload */
    Head h;
    int rc = 0;
    while (pos < end) {
        Py_ssize_t avail = end - pos;
        if (!parse_head(buf + pos, avail, &h)) {
            break;
        }
        if (!takes(self, &h)) {
            /* Not ours to judge: websockets takes the connection from this frame on. */
            self->active = 0;
            rc = append_item(out, Py_False,
                             PyBytes_FromStringAndSize((const char *)buf + pos, avail));
            Py_XDECREF(view);
            return rc;
        }
        if (avail < h.head || h.length > (uint64_t)(avail - h.head)) {
            uint64_t need = (uint64_t)h.head + h.length;
            self->need = need < h.length ? UINT64_MAX : need;
            break;
        }
        Py_ssize_t at = pos + h.head;
        Py_ssize_t frame_end = at + (Py_ssize_t)h.length;
        PyObject *chunk;
        if (h.first != OP_BINARY) {
            rc = append_item(out, Py_False,
                             PyBytes_FromStringAndSize((const char *)buf + pos, frame_end - pos));
        }
        else if (h.masked) {
            chunk = PyBytes_FromStringAndSize(NULL, frame_end - at);
            if (chunk != NULL) {
                xor_mask((unsigned char *)PyBytes_AsString(chunk), buf + at, frame_end - at,
                         buf + at - 4, 0);
            }
            rc = append_item(out, Py_True, chunk);
        }
        else { /* a slice of the input, as the pure splitter gives it: no copy */
            if (view == NULL && (view = PyMemoryView_FromObject(base)) == NULL) {
                return -1;
            }
            rc = append_item(out, Py_True, PySequence_GetSlice(view, at, frame_end));
        }
        if (rc < 0) {
            Py_XDECREF(view);
            return -1;
        }
        pos = frame_end;
    }
    Py_XDECREF(view);
    if (pos < end) {
        return hold(self, buf + pos, end - pos);
    }
    return 0;
}

/* The held frame, completed by data[:missing] (it fits exactly), as scan would give it. */
static int
complete(Splitter *self, const unsigned char *data, Py_ssize_t missing, PyObject *out)
{
    Head h = {0};
    parse_head(self->pending, self->plen, &h); /* held frames have their whole header */
    if (h.first != OP_BINARY) {
        return append_item(out, Py_False, join_pending(self, data, missing));
    }
    if (self->plen < h.head) { /* the read ended inside the mask key: join, then unmask */
        PyObject *frame = join_pending(self, data, missing);
        if (frame == NULL) {
            return -1;
        }
        const unsigned char *p = (const unsigned char *)PyBytes_AsString(frame);
        Py_ssize_t n = PyBytes_Size(frame) - h.head;
        PyObject *chunk = PyBytes_FromStringAndSize(NULL, n);
        if (chunk != NULL) {
            xor_mask((unsigned char *)PyBytes_AsString(chunk), p + h.head, n, p + h.head - 4, 0);
        }
        Py_DECREF(frame);
        return append_item(out, Py_True, chunk);
    }
    Py_ssize_t held = self->plen - h.head; /* payload bytes already held */
    PyObject *chunk = PyBytes_FromStringAndSize(NULL, held + missing);
    if (chunk == NULL) {
        return -1;
    }
    unsigned char *dst = (unsigned char *)PyBytes_AsString(chunk);
    if (h.masked) {
        const unsigned char *key = self->pending + h.head - 4;
        xor_mask(dst, self->pending + h.head, held, key, 0);
        xor_mask(dst + held, data, missing, key, held & 3);
    }
    else {
        memcpy(dst, self->pending + h.head, held);
        memcpy(dst + held, data, missing);
    }
    return append_item(out, Py_True, chunk);
}

static PyObject *
Splitter_feed(Splitter *self, PyObject *data)
{
    Py_buffer in;
    PyObject *out, *joined = NULL;
    if (!self->active) {
        PyObject *rest;
        if (self->plen) { /* a stop() between frames of a read: the held part first */
            if (PyObject_GetBuffer(data, &in, PyBUF_SIMPLE) < 0) {
                return NULL;
            }
            rest = join_pending(self, in.buf, in.len);
            PyBuffer_Release(&in);
            if (rest == NULL) {
                return NULL;
            }
            drop_pending(self);
        }
        else {
            Py_INCREF(data);
            rest = data;
        }
        out = PyList_New(0);
        if (out == NULL || append_item(out, Py_False, rest) < 0) {
            Py_XDECREF(out);
            return NULL;
        }
        return out;
    }
    if (PyObject_GetBuffer(data, &in, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    out = PyList_New(0);
    if (out == NULL) {
        PyBuffer_Release(&in);
        return NULL;
    }
    PyObject *base = data;
    const unsigned char *buf = in.buf;
    Py_ssize_t end = in.len, pos = 0;
    if (self->plen) {
        if (!self->need) { /* the read ended inside a header (rare: a few bytes of it) */
            joined = join_pending(self, in.buf, in.len);
            if (joined == NULL) {
                goto error;
            }
            drop_pending(self);
            base = joined;
            buf = (const unsigned char *)PyBytes_AsString(joined);
            end = PyBytes_Size(joined);
        }
        else { /* complete the one frame that waits, copying only what it lacks */
            if (self->need - (uint64_t)self->plen > (uint64_t)end) {
                if (hold(self, buf, end) < 0) {
                    goto error;
                }
                PyBuffer_Release(&in);
                return out;
            }
            Py_ssize_t missing = (Py_ssize_t)(self->need - (uint64_t)self->plen);
            if (complete(self, buf, missing, out) < 0) {
                goto error;
            }
            drop_pending(self);
            pos = missing;
        }
    }
    if (scan(self, base, buf, end, pos, out) < 0) {
        goto error;
    }
    Py_XDECREF(joined);
    PyBuffer_Release(&in);
    return out;
error:
    Py_XDECREF(joined);
    PyBuffer_Release(&in);
    Py_DECREF(out);
    return NULL;
}

static PyObject *
Splitter_stop(Splitter *self, PyObject *unused)
{
    self->active = 0;
    Py_RETURN_NONE;
}

static int
Splitter_init(Splitter *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"expect_mask", "max_size", NULL};
    PyObject *expect_mask, *max_size;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:BinarySplitter", names, &expect_mask,
                                     &max_size)) {
        return -1;
    }
    int truth = PyObject_IsTrue(expect_mask);
    if (truth < 0) {
        return -1;
    }
    PyObject *size;
    if (max_size == Py_None) {
        size = PyLong_FromUnsignedLongLong(1ULL << 62);
    }
    else if (PyLong_Check(max_size)) {
        Py_INCREF(max_size);
        size = max_size;
    }
    else {
        PyErr_Format(PyExc_TypeError, "max_size must be an int or None, not %R",
                     (PyObject *)Py_TYPE(max_size));
        return -1;
    }
    if (size == NULL) {
        return -1;
    }
    int overflow = 0;
    long long value = PyLong_AsLongLongAndOverflow(size, &overflow);
    if (value == -1 && PyErr_Occurred()) {
        Py_DECREF(size);
        return -1;
    }
    self->takes_binary = overflow > 0 || (!overflow && value >= 0);
    self->max_size = overflow > 0 ? UINT64_MAX : (value >= 0 ? (uint64_t)value : 0);
    PyObject *old = self->max_size_obj;
    self->max_size_obj = size;
    Py_XDECREF(old);
    self->expect_mask = truth;
    self->active = 1;
    drop_pending(self);
    return 0;
}

static void
Splitter_dealloc(Splitter *self)
{
    PyTypeObject *type = Py_TYPE((PyObject *)self);
    PyMem_Free(self->pending);
    Py_XDECREF(self->max_size_obj);
    freefunc free_slot = (freefunc)PyType_GetSlot(type, Py_tp_free);
    free_slot(self);
    Py_DECREF(type);
}

static PyObject *
Splitter_get_active(Splitter *self, void *closure)
{
    return PyBool_FromLong(self->active);
}

static int
Splitter_set_active(Splitter *self, PyObject *value, void *closure)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete active");
        return -1;
    }
    int truth = PyObject_IsTrue(value);
    if (truth < 0) {
        return -1;
    }
    self->active = truth;
    return 0;
}

static PyObject *
Splitter_get_expect_mask(Splitter *self, void *closure)
{
    return PyBool_FromLong(self->expect_mask);
}

static PyObject *
Splitter_get_max_size(Splitter *self, void *closure)
{
    if (self->max_size_obj == NULL) {
        Py_RETURN_NONE;
    }
    Py_INCREF(self->max_size_obj);
    return self->max_size_obj;
}

static PyObject *
Splitter_get_pending(Splitter *self, void *closure)
{
    return PyByteArray_FromStringAndSize((const char *)self->pending, self->plen);
}

static PyMethodDef Splitter_methods[] = {
    {"feed", (PyCFunction)Splitter_feed, METH_O,
     "feed(data) -> list[tuple[bool, bytes | memoryview]]: wsframe.BinarySplitter.feed"},
    {"stop", (PyCFunction)Splitter_stop, METH_NOARGS,
     "stop(): give the connection back to websockets from the next feed() on"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Splitter_getset[] = {
    {"active", (getter)Splitter_get_active, (setter)Splitter_set_active,
     "False once websockets has the connection", NULL},
    {"expect_mask", (getter)Splitter_get_expect_mask, NULL, "True on the server side", NULL},
    {"max_size", (getter)Splitter_get_max_size, NULL, "the largest payload taken", NULL},
    {"_pending", (getter)Splitter_get_pending, NULL, "a copy of the bytes held", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Splitter_slots[] = {
    {Py_tp_doc, "wsframe.BinarySplitter, compiled: the same items from the same bytes."},
    {Py_tp_init, Splitter_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, Splitter_dealloc},
    {Py_tp_methods, Splitter_methods},
    {Py_tp_getset, Splitter_getset},
    {0, NULL},
};

static PyType_Spec Splitter_spec = {
    .name = "aiowstunnel._datapath.BinarySplitter",
    .basicsize = sizeof(Splitter),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Splitter_slots,
};

/* -- MaskKeys ------------------------------------------------------------------------ */

static PyObject *os_module; /* os.urandom is looked up at each refill, as the pure class does */

typedef struct {
    PyObject_HEAD
    Py_ssize_t size;
    PyObject *pool; /* bytes from os.urandom */
    Py_ssize_t pos;
} Keys;

static int
Keys_init(Keys *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"pool_size", NULL};
    Py_ssize_t size = 4096;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|n:MaskKeys", names, &size)) {
        return -1;
    }
    self->size = size;
    Py_CLEAR(self->pool);
    self->pos = 0;
    return 0;
}

static PyObject *
Keys_next(Keys *self, PyObject *unused)
{
    if (self->pool == NULL || self->pos + 4 > PyBytes_Size(self->pool)) {
        PyObject *pool = PyObject_CallMethod(os_module, "urandom", "n", self->size);
        if (pool == NULL) {
            return NULL;
        }
        if (!PyBytes_Check(pool)) {
            Py_DECREF(pool);
            PyErr_SetString(PyExc_TypeError, "os.urandom() did not return bytes");
            return NULL;
        }
        Py_XDECREF(self->pool);
        self->pool = pool;
        self->pos = 0;
    }
    Py_ssize_t take = PyBytes_Size(self->pool) - self->pos; /* as a slice: at most 4 */
    take = take < 4 ? take : 4;
    PyObject *key = PyBytes_FromStringAndSize(PyBytes_AsString(self->pool) + self->pos, take);
    self->pos += 4;
    return key;
}

static void
Keys_dealloc(Keys *self)
{
    PyTypeObject *type = Py_TYPE((PyObject *)self);
    Py_XDECREF(self->pool);
    freefunc free_slot = (freefunc)PyType_GetSlot(type, Py_tp_free);
    free_slot(self);
    Py_DECREF(type);
}

static PyMethodDef Keys_methods[] = {
    {"next", (PyCFunction)Keys_next, METH_NOARGS, "next() -> bytes: the next 4-byte mask key"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Keys_slots[] = {
    {Py_tp_doc, "wsframe.MaskKeys, compiled: keys from os.urandom, 4 KiB at a time."},
    {Py_tp_init, Keys_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, Keys_dealloc},
    {Py_tp_methods, Keys_methods},
    {0, NULL},
};

static PyType_Spec Keys_spec = {
    .name = "aiowstunnel._datapath.MaskKeys",
    .basicsize = sizeof(Keys),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Keys_slots,
};

/* -- the module --------------------------------------------------------------------- */

static PyMethodDef module_methods[] = {
    {"binary_frame", (PyCFunction)(void (*)(void))binary_frame, METH_FASTCALL, binary_frame_doc},
    {"data_header", (PyCFunction)data_header, METH_O, data_header_doc},
    {"data_frame", (PyCFunction)(void (*)(void))data_frame, METH_FASTCALL, data_frame_doc},
    {"data_stream", (PyCFunction)data_stream, METH_O, data_stream_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "aiowstunnel._datapath",
    .m_doc = "The native data path: wsframe's and wire's per-message functions, compiled.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__datapath(void)
{
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) {
        return NULL;
    }
    PyObject *structmod = PyImport_ImportModule("struct");
    if (structmod == NULL) {
        goto error;
    }
    struct_error = PyObject_GetAttrString(structmod, "error");
    Py_DECREF(structmod);
    if (struct_error == NULL) {
        goto error;
    }
    os_module = PyImport_ImportModule("os");
    if (os_module == NULL) {
        goto error;
    }
    PyObject *splitter = PyType_FromSpec(&Splitter_spec);
    if (splitter == NULL || PyModule_AddObject(module, "BinarySplitter", splitter) < 0) {
        Py_XDECREF(splitter);
        goto error;
    }
    PyObject *keys = PyType_FromSpec(&Keys_spec);
    if (keys == NULL || PyModule_AddObject(module, "MaskKeys", keys) < 0) {
        Py_XDECREF(keys);
        goto error;
    }
    return module;
error:
    Py_DECREF(module);
    return NULL;
}
