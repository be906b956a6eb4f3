/* The router's span recorder (request_spans.py), compiled: the same records and the same bytes.
 *
 * request_spans.py already does a request's recording in a few hundred interpreter operations, and encodes
 * it with a cached piece and one struct call per span; what is left there is the interpreter's own rate
 * (docs/observability.md, "Stop 30"). Here a request is one C struct: its ids and times are machine words,
 * its children an array inside it, and its spans are written to the output buffer in one pass. Everything
 * that is not on a common request's path (a caller's traceparent, errors, a sampler with a ratio, the pieces
 * missing from the encoder's cache) calls the same Python code as request_spans.py, so the two cannot
 * drift. tests/unit/otlp/test_request_spans_compiled.py holds them to the same output.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <pthread.h>
#include <sys/random.h>

#define INTERNAL 1
#define SERVER 2
#define ERROR 2
#define HEAD_SIZE 56 /* tags, trace id, span id, parent id, start, end */
#define HEAD_ROOT_SIZE 46 /* the same without a parent */
#define INLINE_CHILDREN 4
#define INLINE_EXTRA 2
static const uint64_t ODD = 0x9E3779B97F4A7C15ULL;

/* ---- ids and times ------------------------------------------------------------------------------- */

/* xoshiro256** seeded from the kernel, and seeded again in a forked child (the router forks its workers),
 * so two processes never draw the same ids. */
static uint64_t rng[4];

static void seed(void) {
    while (getrandom(rng, sizeof rng, 0) != (ssize_t)sizeof rng) {
    }
    if (!(rng[0] | rng[1] | rng[2] | rng[3])) rng[0] = 1;
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t draw(void) {
    uint64_t result = rotl(rng[1] * 5, 7) * 9, t = rng[1] << 17;
    rng[2] ^= rng[0];
    rng[3] ^= rng[1];
    rng[1] ^= rng[2];
    rng[0] ^= rng[3];
    rng[2] ^= t;
    rng[3] = rotl(rng[3], 45);
    return result;
}

static inline int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static char HEX_PAIRS[512]; /* byte b's two hex digits at 2b (made at import) */

static void hex_of(const unsigned char *bytes, int n, char *out) {
    for (int i = 0; i < n; i++) memcpy(out + 2 * i, HEX_PAIRS + 2 * bytes[i], 2);
}

static inline void le_bytes(uint64_t value, unsigned char *out) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(out, &value, 8);
#else
    for (int i = 0; i < 8; i++) out[i] = (unsigned char)(value >> (8 * i));
#endif
}

static int unhex(const char *text, Py_ssize_t n, unsigned char *out) {
    for (Py_ssize_t i = 0; i < n / 2; i++) {
        int v = 0;
        for (int j = 0; j < 2; j++) {
            char c = text[2 * i + j];
            int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                    : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
            if (d < 0) return -1;
            v = v * 16 + d;
        }
        out[i] = (unsigned char)v;
    }
    return 0;
}

/* A span id's W3C hex: its little-endian bytes'. */
static PyObject *span_hex(uint64_t span) {
    unsigned char bytes[8];
    char text[16];
    le_bytes(span, bytes);
    hex_of(bytes, 8, text);
    return PyUnicode_FromStringAndSize(text, 16);
}

/* ---- module state: what the slow paths call in Python -------------------------------------------- */

static PyObject *py_parse_traceparent; /* propagation.parse_traceparent */
static PyObject *py_exception;         /* request_spans._exception */
static PyObject *py_error_message;     /* request_spans._error_message */
static PyObject *s_traceparent, *s_tracestate, *s_get, *s_items, *s_piece, *s_tail, *s_pieces, *s_sample,
    *s_ratio, *s_fields, *s_trace_id, *s_span_id, *s_sampled, *s_trace_state, *s_method_key, *s_path_key, *s_empty;

/* ---- RequestSpans -------------------------------------------------------------------------------- */

typedef struct {
    PyObject *name;
    PyObject *attributes; /* a Mapping */
    PyObject *error;      /* NULL, or (message, [event]) */
    uint64_t span;
    int64_t start, end; /* end 0: open */
    int parent_at;      /* 0: the request; k: its k-th child */
} Child;

typedef struct Recorder Recorder;

typedef struct {
    PyObject_HEAD
    Recorder *recorder; /* its sink */
    PyObject *method, *path;
    PyObject *trace_state;    /* NULL or a non-empty str */
    PyObject *status_message; /* NULL or str */
    PyObject *events;         /* NULL or a list */
    PyObject *trace_hex;      /* the trace id's W3C hex, made when first asked for */
    unsigned char trace[16];  /* big-endian, as the W3C hex reads */
    uint64_t span, parent;    /* parent 0: a new trace */
    int64_t start_ns, end_ns;
    int status_code, current, sampled, encoded;
    Py_ssize_t count, capacity;
    Child *children;
    Child inline_children[INLINE_CHILDREN];
    /* set_attribute's, as key, value, key, value... */
    Py_ssize_t extra_count, extra_capacity;
    PyObject **extra;
    PyObject *extra_inline[2 * INLINE_EXTRA];
} Spans;

struct Recorder {
    PyObject_HEAD
    PyObject *sampler, *sink, *current; /* current: a ContextVar or NULL */
    int new_traces_sampled;
};

static PyTypeObject SpansType, RecorderType;

/* An array that starts in ``inline_data`` (inside its owner) moved to ``wanted`` bytes on the heap, its
 * ``used`` bytes kept: the children, set_attribute's pairs and the encoding buffer all grow this way.
 * NULL (MemoryError set) when there is no memory; the old array is then still valid. */
static void *grow(void *data, const void *inline_data, size_t used, size_t wanted) {
    void *grown;
    if (data == inline_data) {
        grown = PyMem_Malloc(wanted);
        if (grown != NULL) memcpy(grown, data, used);
    } else {
        grown = PyMem_Realloc(data, wanted);
    }
    if (grown == NULL) PyErr_NoMemory();
    return grown;
}

static Child *add_child(Spans *self) {
    if (self->count == self->capacity) {
        Py_ssize_t capacity = self->capacity * 2;
        Child *grown = grow(self->children, self->inline_children, self->count * sizeof(Child),
                            capacity * sizeof(Child));
        if (grown == NULL) return NULL;
        self->children = grown;
        self->capacity = capacity;
    }
    return &self->children[self->count++];
}

static void clear_children(Spans *self) {
    for (Py_ssize_t i = 0; i < self->count; i++) {
        Child *child = &self->children[i];
        Py_CLEAR(child->name);
        Py_CLEAR(child->attributes);
        Py_CLEAR(child->error);
    }
    self->count = 0;
}

/* Records are not tracked by the garbage collector: a router holds thousands of them queued for export, and
 * the collector's passes over them cost more than recording. They cannot be part of a cycle of their own:
 * the one reference out of a record that could lead back to it, its recorder's (its sink's), is dropped
 * when the record is handed over, and only strings, numbers and the callers' attribute mappings remain. */
static void Spans_clear(Spans *self) {
    Py_CLEAR(self->recorder);
    Py_CLEAR(self->method);
    Py_CLEAR(self->path);
    for (Py_ssize_t i = 0; i < 2 * self->extra_count; i++) Py_CLEAR(self->extra[i]);
    self->extra_count = 0;
    Py_CLEAR(self->trace_state);
    Py_CLEAR(self->status_message);
    Py_CLEAR(self->events);
    Py_CLEAR(self->trace_hex);
    clear_children(self);
}

static void Spans_dealloc(Spans *self) {
    Spans_clear(self);
    if (self->children != self->inline_children) PyMem_Free(self->children);
    if (self->extra != self->extra_inline) PyMem_Free(self->extra);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static uint64_t current_span(Spans *self) {
    return self->current && !self->encoded ? self->children[self->current - 1].span : self->span;
}

static int open_child(Spans *self, PyObject *name, PyObject *attributes, int64_t start, int64_t end) {
    Child *child = add_child(self);
    if (child == NULL) return -1;
    uint64_t span = self->span ^ ((uint64_t)self->count * ODD);
    child->span = span ? span : 1;
    child->name = Py_NewRef(name);
    child->attributes = Py_NewRef(attributes);
    child->error = NULL;
    child->start = start;
    child->end = end;
    child->parent_at = self->current;
    return 0;
}

static PyObject *Spans_child(Spans *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "child(name, attributes)");
        return NULL;
    }
    if (self->encoded) {
        PyErr_SetString(PyExc_AssertionError, "a child of an ended request");
        return NULL;
    }
    if (open_child(self, args[0], args[1], now_ns(), 0) < 0) return NULL;
    self->current = (int)self->count;
    return Py_NewRef(self);
}

static PyObject *Spans_ended_child(Spans *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "ended_child(name, attributes, start_ns)");
        return NULL;
    }
    if (self->encoded || self->end_ns) Py_RETURN_NONE;
    int64_t start = PyLong_AsLongLong(args[2]);
    if (start == -1 && PyErr_Occurred()) return NULL;
    if (open_child(self, args[0], args[1], start, now_ns()) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Spans_enter(Spans *self, PyObject *unused) { return Py_NewRef(self); }

/* (message, [exception event]) for an error, made by request_spans.py's helpers. */
static PyObject *error_of(PyObject *exc) {
    PyObject *message = PyObject_CallOneArg(py_error_message, exc);
    if (message == NULL) return NULL;
    PyObject *event = PyObject_CallOneArg(py_exception, exc);
    if (event == NULL) {
        Py_DECREF(message);
        return NULL;
    }
    PyObject *events = PyList_New(1);
    if (events == NULL) {
        Py_DECREF(message);
        Py_DECREF(event);
        return NULL;
    }
    PyList_SET_ITEM(events, 0, event);
    PyObject *error = PyTuple_Pack(2, message, events);
    Py_DECREF(message);
    Py_DECREF(events);
    return error;
}

static int hand_over(Spans *self) {
    self->end_ns = now_ns();
    Recorder *recorder = self->recorder;
    self->recorder = NULL; /* queued records hold no path back to their queue (Spans_clear) */
    if (!self->sampled) {
        Py_DECREF(recorder);
        return 0;
    }
    PyObject *count = PyLong_FromSsize_t(self->count + 1);
    PyObject *result = NULL;
    if (count != NULL) {
        PyObject *args[2] = {(PyObject *)self, count};
        result = PyObject_Vectorcall(recorder->sink, args, 2, NULL);
        Py_DECREF(count);
    }
    Py_DECREF(recorder);
    if (result == NULL) return -1;
    Py_DECREF(result);
    return 0;
}

/* The innermost open child ends (an exception marks it ERROR). */
static PyObject *end_child(Spans *self, PyObject *exc) {
    int current = self->current;
    if (!current) Py_RETURN_NONE;
    if (self->encoded) { /* the request was ended and encoded first: not recorded */
        self->current = 0;
        Py_RETURN_NONE;
    }
    Child *child = &self->children[current - 1];
    self->current = child->parent_at;
    if (!self->end_ns) {
        child->end = now_ns();
        if (exc != Py_None) {
            PyObject *error = error_of(exc);
            if (error == NULL) return NULL;
            Py_XSETREF(child->error, error);
        }
    }
    Py_RETURN_NONE;
}

/* The request ends (an exception marks it ERROR) and goes to the sink, once. */
static PyObject *end_request(Spans *self, PyObject *exc) {
    if (self->end_ns) Py_RETURN_NONE;
    if (exc != Py_None) {
        PyObject *error = error_of(exc);
        if (error == NULL) return NULL;
        Py_XSETREF(self->events, Py_NewRef(PyTuple_GET_ITEM(error, 1)));
        Py_XSETREF(self->status_message, Py_NewRef(PyTuple_GET_ITEM(error, 0)));
        self->status_code = ERROR;
        Py_DECREF(error);
    }
    if (hand_over(self) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Spans_exit(Spans *self, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *exc = nargs >= 2 ? args[1] : Py_None;
    return self->current ? end_child(self, exc) : end_request(self, exc);
}

static PyObject *Spans_end_child(Spans *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "end_child(exc=None)");
        return NULL;
    }
    return end_child(self, nargs ? args[0] : Py_None);
}

static PyObject *Spans_end(Spans *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "end(exc=None)");
        return NULL;
    }
    return end_request(self, nargs ? args[0] : Py_None);
}

static PyObject *trace_hex(Spans *self) {
    if (self->trace_hex == NULL) {
        char text[32];
        hex_of(self->trace, 16, text);
        self->trace_hex = PyUnicode_FromStringAndSize(text, 32);
    }
    return self->trace_hex;
}

static PyObject *Spans_inject(Spans *self, PyObject *headers) {
    PyObject *value = PyUnicode_New(55, 127);
    if (value == NULL) return NULL;
    char *out = (char *)PyUnicode_1BYTE_DATA(value);
    unsigned char span[8];
    memcpy(out, "00-", 3);
    hex_of(self->trace, 16, out + 3);
    out[35] = '-';
    le_bytes(current_span(self), span);
    hex_of(span, 8, out + 36);
    memcpy(out + 52, self->sampled ? "-01" : "-00", 3);
    int failed = PyObject_SetItem(headers, s_traceparent, value);
    Py_DECREF(value);
    if (failed < 0) return NULL;
    if (self->trace_state != NULL && PyObject_SetItem(headers, s_tracestate, self->trace_state) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Spans_set_attribute(Spans *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set_attribute(key, value)");
        return NULL;
    }
    if (self->extra_count == self->extra_capacity) {
        Py_ssize_t capacity = self->extra_capacity * 2;
        PyObject **grown = grow(self->extra, self->extra_inline, 2 * self->extra_count * sizeof(PyObject *),
                                2 * capacity * sizeof(PyObject *));
        if (grown == NULL) return NULL;
        self->extra = grown;
        self->extra_capacity = capacity;
    }
    self->extra[2 * self->extra_count] = Py_NewRef(args[0]);
    self->extra[2 * self->extra_count + 1] = Py_NewRef(args[1]);
    self->extra_count++;
    Py_RETURN_NONE;
}

static PyObject *Spans_set_status(Spans *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "set_status(code, message='')");
        return NULL;
    }
    int code = PyLong_AsLong(args[0]);
    if (code == -1 && PyErr_Occurred()) return NULL;
    self->status_code = code;
    Py_CLEAR(self->status_message);
    if (code == ERROR && nargs == 2) self->status_message = Py_NewRef(args[1]);
    Py_RETURN_NONE;
}

/* ---- encoding ------------------------------------------------------------------------------------ */

typedef struct {
    char *data;
    Py_ssize_t size, capacity;
    char local[2048];
} Buffer;

static int reserve(Buffer *out, Py_ssize_t more) {
    if (out->size + more <= out->capacity) return 0;
    Py_ssize_t capacity = (out->size + more) * 2;
    char *grown = grow(out->data, out->local, out->size, capacity);
    if (grown == NULL) return -1;
    out->data = grown;
    out->capacity = capacity;
    return 0;
}

static int put_bytes(Buffer *out, PyObject *bytes) {
    if (!PyBytes_Check(bytes)) {
        PyErr_SetString(PyExc_TypeError, "the encoder gave no bytes");
        return -1;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(bytes);
    if (reserve(out, n) < 0) return -1;
    memcpy(out->data + out->size, PyBytes_AS_STRING(bytes), n);
    out->size += n;
    return 0;
}

static inline void put_u64(char *at, uint64_t value) { le_bytes(value, (unsigned char *)at); }

static int put_head(Buffer *out, const unsigned char *trace, uint64_t span, uint64_t parent, int64_t start,
                    int64_t end) {
    if (reserve(out, HEAD_SIZE) < 0) return -1;
    char *at = out->data + out->size;
    at[0] = 0x0A, at[1] = 16;
    memcpy(at + 2, trace, 16);
    at[18] = 0x12, at[19] = 8;
    put_u64(at + 20, span);
    at += 28;
    if (parent) {
        at[0] = 0x22, at[1] = 8;
        put_u64(at + 2, parent);
        at += 10;
    }
    at[0] = 0x39;
    put_u64(at + 1, (uint64_t)start);
    at[9] = 0x41;
    put_u64(at + 10, (uint64_t)end);
    out->size += parent ? HEAD_SIZE : HEAD_ROOT_SIZE;
    return 0;
}

/* The encoder's piece cached under ``*key`` (borrowed) into ``*piece``, or NULL. A key that cannot be hashed
 * (a list attribute) becomes None: its piece is made, not cached. -1 on any other error. */
static int lookup_piece(PyObject *pieces, PyObject **key, PyObject **piece) {
    *piece = PyDict_GetItemWithError(pieces, *key);
    if (*piece != NULL || !PyErr_Occurred()) return 0;
    if (!PyErr_ExceptionMatches(PyExc_TypeError)) return -1;
    PyErr_Clear();
    Py_SETREF(*key, Py_NewRef(Py_None));
    return 0;
}

/* The cache key of a child's piece, (name, state, *keys, *values), looked up in ``pieces``: the key to cache
 * the piece under (None when not cacheable), NULL on error. */
static PyObject *child_key(PyObject *name, PyObject *state, PyObject *attributes, PyObject *pieces,
                           PyObject **piece) {
    PyObject *key;
    if (PyDict_CheckExact(attributes)) {
        Py_ssize_t n = PyDict_GET_SIZE(attributes), pos = 0, i = 0;
        key = PyTuple_New(2 + 2 * n);
        if (key == NULL) return NULL;
        PyObject *k, *v;
        while (PyDict_Next(attributes, &pos, &k, &v) && i < n) {
            PyTuple_SET_ITEM(key, 2 + i, Py_NewRef(k));
            PyTuple_SET_ITEM(key, 2 + n + i, Py_NewRef(v));
            i++;
        }
    } else {
        PyObject *keys = PyMapping_Keys(attributes), *values = PyMapping_Values(attributes);
        if (keys == NULL || values == NULL) {
            Py_XDECREF(keys);
            Py_XDECREF(values);
            return NULL;
        }
        Py_ssize_t n = PyList_GET_SIZE(keys);
        key = PyTuple_New(2 + 2 * n);
        if (key != NULL) {
            for (Py_ssize_t i = 0; i < n; i++) {
                PyTuple_SET_ITEM(key, 2 + i, Py_NewRef(PyList_GET_ITEM(keys, i)));
                PyTuple_SET_ITEM(key, 2 + n + i, Py_NewRef(PyList_GET_ITEM(values, i)));
            }
        }
        Py_DECREF(keys);
        Py_DECREF(values);
        if (key == NULL) return NULL;
    }
    PyTuple_SET_ITEM(key, 0, Py_NewRef(name));
    PyTuple_SET_ITEM(key, 1, Py_NewRef(state));
    if (lookup_piece(pieces, &key, piece) < 0) Py_CLEAR(key);
    return key;
}

/* encoder.piece(key, name, kind, attributes, state, rest) */
static PyObject *make_piece(PyObject *encoder, PyObject *key, PyObject *name, int kind, PyObject *attributes,
                            PyObject *state, Py_ssize_t rest) {
    PyObject *kind_obj = PyLong_FromLong(kind), *rest_obj = PyLong_FromSsize_t(rest);
    PyObject *piece = NULL;
    if (kind_obj != NULL && rest_obj != NULL) {
        PyObject *args[7] = {encoder, key, name, kind_obj, attributes, state, rest_obj};
        piece = PyObject_VectorcallMethod(s_piece, args, 7, NULL);
    }
    Py_XDECREF(kind_obj);
    Py_XDECREF(rest_obj);
    return piece;
}

/* encoder.tail(events, status_code, status_message) */
static PyObject *make_tail(PyObject *encoder, PyObject *events, int code, PyObject *message) {
    PyObject *code_obj = PyLong_FromLong(code);
    if (code_obj == NULL) return NULL;
    PyObject *args[4] = {encoder, events ? events : Py_None, code_obj, message ? message : s_empty};
    PyObject *tail = PyObject_VectorcallMethod(s_tail, args, 4, NULL);
    Py_DECREF(code_obj);
    return tail;
}

static PyObject *Spans_attributes(Spans *self, void *closure);
static PyObject *Spans_name(Spans *self, void *closure);

/* Pieces by the identity of what they were made from, before the encoder's dict (whose keys are tuples
 * built, hashed and compared per span). The router's spans are made from the same objects request after
 * request: its constant names and keys, the pods' URLs, small ints. A piece depends only on its name, kind,
 * attributes, trace state and size, not on the encoder, so one cache serves all. Each slot holds references
 * to its objects, so their addresses are not reused while it is cached. */
#define PIECE_SLOTS 256
#define PIECE_OBJECTS 8
typedef struct {
    PyObject *objects[PIECE_OBJECTS];
    PyObject *piece;
    int n, tag;
} PieceSlot;
static PieceSlot piece_slots[PIECE_SLOTS];

static PieceSlot *piece_slot(int tag, PyObject **objects, int n) {
    uint64_t h = (uint64_t)tag;
    for (int i = 0; i < n; i++) h = (h ^ (uint64_t)(uintptr_t)objects[i]) * ODD;
    return &piece_slots[h >> 56];
}

/* The cached piece (borrowed), or NULL. */
static PyObject *cached_piece(int tag, PyObject **objects, int n) {
    PieceSlot *slot = piece_slot(tag, objects, n);
    if (slot->piece == NULL || slot->tag != tag || slot->n != n) return NULL;
    for (int i = 0; i < n; i++)
        if (slot->objects[i] != objects[i]) return NULL;
    return slot->piece;
}

static void cache_piece(int tag, PyObject **objects, int n, PyObject *piece) {
    PieceSlot *slot = piece_slot(tag, objects, n), old = *slot;
    for (int i = 0; i < n; i++) slot->objects[i] = Py_NewRef(objects[i]);
    slot->piece = Py_NewRef(piece);
    slot->n = n;
    slot->tag = tag;
    for (int i = 0; i < old.n; i++) Py_DECREF(old.objects[i]);
    Py_XDECREF(old.piece);
}

/* A child's name, state, attribute keys and values (borrowed), or 0 when they are too many to cache. */
static int child_identity(Child *child, PyObject *state, PyObject **objects) {
    PyObject *attributes = child->attributes;
    if (!PyDict_CheckExact(attributes) || 2 + 2 * PyDict_GET_SIZE(attributes) > PIECE_OBJECTS) return 0;
    Py_ssize_t n = PyDict_GET_SIZE(attributes), pos = 0, i = 0;
    PyObject *k, *v;
    objects[0] = child->name;
    objects[1] = state;
    while (i < n && PyDict_Next(attributes, &pos, &k, &v)) {
        objects[2 + i] = k;
        objects[2 + n + i] = v;
        i++;
    }
    return i == n ? (int)(2 + 2 * n) : 0;
}

static int encode_child(Spans *self, Child *child, PyObject *encoder, PyObject *pieces, PyObject *state,
                        Buffer *out) {
    uint64_t parent = child->parent_at ? self->children[child->parent_at - 1].span : self->span;
    PyObject *piece = NULL, *owned = NULL, *tail = NULL;
    if (child->error == NULL) {
        PyObject *objects[PIECE_OBJECTS];
        int n = child_identity(child, state, objects);
        piece = n ? cached_piece(0, objects, n) : NULL;
        if (piece == NULL) {
            PyObject *key = child_key(child->name, state, child->attributes, pieces, &piece);
            if (key == NULL) return -1;
            if (piece == NULL) {
                PyObject *items = PyObject_CallMethodNoArgs(child->attributes, s_items);
                if (items != NULL) {
                    owned = make_piece(encoder, key, child->name, INTERNAL, items, state, HEAD_SIZE);
                    Py_DECREF(items);
                }
                piece = owned;
            }
            Py_DECREF(key);
            if (piece == NULL) return -1;
            if (n) cache_piece(0, objects, n, piece);
        }
    } else {
        tail = make_tail(encoder, PyTuple_GET_ITEM(child->error, 1), ERROR, PyTuple_GET_ITEM(child->error, 0));
        if (tail == NULL) return -1;
        PyObject *items = PyObject_CallMethodNoArgs(child->attributes, s_items);
        if (items != NULL) {
            owned = make_piece(encoder, Py_None, child->name, INTERNAL, items, state,
                               HEAD_SIZE + PyBytes_GET_SIZE(tail));
            Py_DECREF(items);
        }
        piece = owned;
        if (piece == NULL) {
            Py_DECREF(tail);
            return -1;
        }
    }
    int failed = put_bytes(out, piece) < 0
                 || put_head(out, self->trace, child->span, parent, child->start, child->end) < 0
                 || (tail != NULL && put_bytes(out, tail) < 0);
    Py_XDECREF(owned);
    Py_XDECREF(tail);
    return failed ? -1 : 0;
}

static int encode_root(Spans *self, PyObject *encoder, PyObject *pieces, PyObject *state, Buffer *out) {
    Py_ssize_t head = self->parent ? HEAD_SIZE : HEAD_ROOT_SIZE;
    PyObject *piece = NULL, *owned = NULL, *tail = NULL;
    if (self->status_code || (self->events != NULL && PyList_GET_SIZE(self->events))) {
        tail = make_tail(encoder, self->events, self->status_code, self->status_message);
        if (tail == NULL) return -1;
        PyObject *name = Spans_name(self, NULL), *attributes = Spans_attributes(self, NULL);
        if (name != NULL && attributes != NULL)
            owned = make_piece(encoder, Py_None, name, SERVER, attributes, state, head + PyBytes_GET_SIZE(tail));
        Py_XDECREF(name);
        Py_XDECREF(attributes);
        piece = owned;
    } else {
        Py_ssize_t n = 2 * self->extra_count;
        PyObject *objects[PIECE_OBJECTS];
        int identity = 3 + n <= PIECE_OBJECTS ? (int)(3 + n) : 0;
        if (identity) {
            objects[0] = self->method;
            objects[1] = self->path;
            objects[2] = state;
            memcpy(objects + 3, self->extra, n * sizeof(PyObject *));
            piece = cached_piece((int)head, objects, identity);
            if (piece != NULL) goto write;
        }
        PyObject *key = PyTuple_New(5 + n); /* (None, method, path, state, head size, key, value, ...) */
        if (key == NULL) return -1;
        PyTuple_SET_ITEM(key, 0, Py_NewRef(Py_None));
        PyTuple_SET_ITEM(key, 1, Py_NewRef(self->method));
        PyTuple_SET_ITEM(key, 2, Py_NewRef(self->path));
        PyTuple_SET_ITEM(key, 3, Py_NewRef(state));
        PyObject *size = PyLong_FromSsize_t(head);
        if (size == NULL) {
            Py_DECREF(key);
            return -1;
        }
        PyTuple_SET_ITEM(key, 4, size);
        for (Py_ssize_t i = 0; i < n; i++) PyTuple_SET_ITEM(key, 5 + i, Py_NewRef(self->extra[i]));
        if (lookup_piece(pieces, &key, &piece) < 0) {
            Py_DECREF(key);
            return -1;
        }
        if (piece == NULL) {
            PyObject *name = Spans_name(self, NULL), *attributes = Spans_attributes(self, NULL);
            if (name != NULL && attributes != NULL)
                owned = make_piece(encoder, key, name, SERVER, attributes, state, head);
            Py_XDECREF(name);
            Py_XDECREF(attributes);
            piece = owned;
        }
        Py_DECREF(key);
        if (piece != NULL && identity) cache_piece((int)head, objects, identity, piece);
    }
write:
    if (piece == NULL) {
        Py_XDECREF(tail);
        return -1;
    }
    int failed = put_bytes(out, piece) < 0
                 || put_head(out, self->trace, self->span, self->parent, self->start_ns, self->end_ns) < 0
                 || (tail != NULL && put_bytes(out, tail) < 0);
    Py_XDECREF(owned);
    Py_XDECREF(tail);
    return failed ? -1 : 0;
}

/* The request's spans, children first, as ScopeSpans.spans fields (request_spans.py's ``fields``). */
static PyObject *Spans_fields(Spans *self, PyObject *encoder) {
    PyObject *pieces = PyObject_GetAttr(encoder, s_pieces);
    if (pieces == NULL) return NULL;
    if (!PyDict_Check(pieces)) {
        Py_DECREF(pieces);
        PyErr_SetString(PyExc_TypeError, "encoder.pieces is not a dict");
        return NULL;
    }
    PyObject *state = self->trace_state ? self->trace_state : s_empty;
    Buffer out;
    out.data = out.local;
    out.size = 0;
    out.capacity = sizeof out.local;
    int failed = 0;
    if (!self->encoded) {
        for (Py_ssize_t i = 0; i < self->count && !failed; i++) {
            if (self->children[i].end) failed = encode_child(self, &self->children[i], encoder, pieces, state, &out) < 0;
        }
        clear_children(self); /* an encoded request's children are not read again (current_span, end_child) */
        self->encoded = 1;
    }
    if (!failed) failed = encode_root(self, encoder, pieces, state, &out) < 0;
    Py_DECREF(pieces);
    PyObject *result = failed ? NULL : PyBytes_FromStringAndSize(out.data, out.size);
    if (out.data != out.local) PyMem_Free(out.data);
    return result;
}

/* ---- attributes ---------------------------------------------------------------------------------- */

static PyObject *Spans_name(Spans *self, void *closure) { return PyUnicode_FromFormat("%U %U", self->method, self->path); }

static PyObject *Spans_attributes(Spans *self, void *closure) {
    Py_ssize_t n = self->extra_count;
    PyObject *list = PyList_New(2 + n);
    if (list == NULL) return NULL;
    PyObject *method = PyTuple_Pack(2, s_method_key, self->method), *path = PyTuple_Pack(2, s_path_key, self->path);
    if (method == NULL || path == NULL) {
        Py_XDECREF(method);
        Py_XDECREF(path);
        Py_DECREF(list);
        return NULL;
    }
    PyList_SET_ITEM(list, 0, method);
    PyList_SET_ITEM(list, 1, path);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PyTuple_Pack(2, self->extra[2 * i], self->extra[2 * i + 1]);
        if (pair == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, 2 + i, pair);
    }
    return list;
}

static PyObject *Spans_get_extra(Spans *self, void *closure) {
    PyObject *attributes = Spans_attributes(self, NULL);
    if (attributes == NULL) return NULL;
    PyObject *extra = PyList_GetSlice(attributes, 2, PY_SSIZE_T_MAX);
    Py_DECREF(attributes);
    if (extra == NULL) return NULL;
    PyObject *tuple = PyList_AsTuple(extra);
    Py_DECREF(extra);
    return tuple;
}

static PyObject *Spans_get_trace_id(Spans *self, void *closure) { return Py_XNewRef(trace_hex(self)); }
static PyObject *Spans_get_span_id(Spans *self, void *closure) { return span_hex(self->span); }
static PyObject *Spans_get_current_id(Spans *self, void *closure) { return span_hex(current_span(self)); }

static PyObject *Spans_get_parent_id(Spans *self, void *closure) {
    if (!self->parent) Py_RETURN_NONE;
    return span_hex(self->parent);
}

static PyObject *Spans_get_span(Spans *self, void *closure) { return PyLong_FromUnsignedLongLong(self->span); }
static PyObject *Spans_get_parent(Spans *self, void *closure) { return PyLong_FromUnsignedLongLong(self->parent); }
static PyObject *Spans_get_start_ns(Spans *self, void *closure) { return PyLong_FromLongLong(self->start_ns); }
static PyObject *Spans_get_end_ns(Spans *self, void *closure) { return PyLong_FromLongLong(self->end_ns); }
static PyObject *Spans_get_sampled(Spans *self, void *closure) { return PyBool_FromLong(self->sampled); }
static PyObject *Spans_get_current(Spans *self, void *closure) { return PyLong_FromLong(self->current); }
static PyObject *Spans_get_status_code(Spans *self, void *closure) { return PyLong_FromLong(self->status_code); }
static PyObject *Spans_get_method(Spans *self, void *closure) { return Py_NewRef(self->method); }
static PyObject *Spans_get_path(Spans *self, void *closure) { return Py_NewRef(self->path); }

static PyObject *Spans_get_trace_state(Spans *self, void *closure) {
    return Py_NewRef(self->trace_state ? self->trace_state : s_empty);
}

static PyObject *Spans_get_status_message(Spans *self, void *closure) {
    return Py_NewRef(self->status_message ? self->status_message : s_empty);
}

static PyObject *Spans_get_events(Spans *self, void *closure) {
    return Py_NewRef(self->events ? self->events : Py_None);
}

/* The children as request_spans.py keeps them: [name, attributes, span id, parent's position, start, end,
 * error]; None once encoded. A copy: for tests and debugging, not the request path. */
static PyObject *Spans_get_children(Spans *self, void *closure) {
    if (self->encoded) Py_RETURN_NONE;
    PyObject *list = PyList_New(self->count);
    if (list == NULL) return NULL;
    for (Py_ssize_t i = 0; i < self->count; i++) {
        Child *c = &self->children[i];
        PyObject *item = Py_BuildValue("[OOKiLLO]", c->name, c->attributes, (unsigned long long)c->span,
                                       c->parent_at, (long long)c->start, (long long)c->end,
                                       c->error ? c->error : Py_None);
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, item);
    }
    return list;
}

static PyMethodDef Spans_methods[] = {
    {"child", (PyCFunction)(void (*)(void))Spans_child, METH_FASTCALL,
     "Open a child of the innermost open span (``with`` the returned request to end it)."},
    {"ended_child", (PyCFunction)(void (*)(void))Spans_ended_child, METH_FASTCALL,
     "Record a child of the innermost open span that began at ``start_ns`` and ends now."},
    {"inject", (PyCFunction)Spans_inject, METH_O, "Make the innermost open span the parent of whoever gets ``headers``."},
    {"set_attribute", (PyCFunction)(void (*)(void))Spans_set_attribute, METH_FASTCALL, NULL},
    {"set_status", (PyCFunction)(void (*)(void))Spans_set_status, METH_FASTCALL, NULL},
    {"end", (PyCFunction)(void (*)(void))Spans_end, METH_FASTCALL,
     "End the request's span (an exception marks it ERROR) and hand it to the sink (once)."},
    {"end_child", (PyCFunction)(void (*)(void))Spans_end_child, METH_FASTCALL,
     "End the innermost open child (an exception marks it ERROR)."},
    {"fields", (PyCFunction)Spans_fields, METH_O, "The request's spans as ScopeSpans.spans fields."},
    {"__enter__", (PyCFunction)Spans_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))Spans_exit, METH_FASTCALL, NULL},
    {NULL},
};

static PyGetSetDef Spans_getset[] = {
    {"name", (getter)Spans_name, NULL, NULL, NULL},
    {"attributes", (getter)Spans_attributes, NULL, NULL, NULL},
    {"extra", (getter)Spans_get_extra, NULL, NULL, NULL},
    {"trace_id", (getter)Spans_get_trace_id, NULL, NULL, NULL},
    {"span_id", (getter)Spans_get_span_id, NULL, NULL, NULL},
    {"parent_id", (getter)Spans_get_parent_id, NULL, NULL, NULL},
    {"current_id", (getter)Spans_get_current_id, NULL, NULL, NULL},
    {"span", (getter)Spans_get_span, NULL, NULL, NULL},
    {"parent", (getter)Spans_get_parent, NULL, NULL, NULL},
    {"start_ns", (getter)Spans_get_start_ns, NULL, NULL, NULL},
    {"end_ns", (getter)Spans_get_end_ns, NULL, NULL, NULL},
    {"sampled", (getter)Spans_get_sampled, NULL, NULL, NULL},
    {"current", (getter)Spans_get_current, NULL, NULL, NULL},
    {"status_code", (getter)Spans_get_status_code, NULL, NULL, NULL},
    {"status_message", (getter)Spans_get_status_message, NULL, NULL, NULL},
    {"events", (getter)Spans_get_events, NULL, NULL, NULL},
    {"method", (getter)Spans_get_method, NULL, NULL, NULL},
    {"path", (getter)Spans_get_path, NULL, NULL, NULL},
    {"trace_state", (getter)Spans_get_trace_state, NULL, NULL, NULL},
    {"children", (getter)Spans_get_children, NULL, NULL, NULL},
    {NULL},
};

static PyTypeObject SpansType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "modelyard.otlp._request_spans.RequestSpans",
    .tp_basicsize = sizeof(Spans),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The request's SERVER span and its children (request_spans.RequestSpans, compiled).",
    .tp_dealloc = (destructor)Spans_dealloc,
    .tp_methods = Spans_methods,
    .tp_getset = Spans_getset,
};

/* ---- RequestRecorder ----------------------------------------------------------------------------- */

static int Recorder_init(Recorder *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"sampler", "sink", "current", NULL};
    PyObject *sampler, *sink, *current = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|O", names, &sampler, &sink, &current)) return -1;
    if (current != Py_None && !PyContextVar_CheckExact(current)) {
        PyErr_SetString(PyExc_TypeError, "current must be a ContextVar or None");
        return -1;
    }
    PyObject *ratio = PyObject_GetAttr(sampler, s_ratio);
    if (ratio == NULL) return -1;
    double value = PyFloat_AsDouble(ratio);
    Py_DECREF(ratio);
    if (value == -1.0 && PyErr_Occurred()) return -1;
    self->new_traces_sampled = value >= 1.0; /* always_on and parentbased_always_on */
    Py_XSETREF(self->sampler, Py_NewRef(sampler));
    Py_XSETREF(self->sink, Py_NewRef(sink));
    Py_XSETREF(self->current, current == Py_None ? NULL : Py_NewRef(current));
    return 0;
}

static int Recorder_traverse(Recorder *self, visitproc visit, void *arg) {
    Py_VISIT(self->sampler);
    Py_VISIT(self->sink);
    Py_VISIT(self->current);
    return 0;
}

static int Recorder_clear(Recorder *self) {
    Py_CLEAR(self->sampler);
    Py_CLEAR(self->sink);
    Py_CLEAR(self->current);
    return 0;
}

static void Recorder_dealloc(Recorder *self) {
    PyObject_GC_UnTrack(self);
    Recorder_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* sampler.sample(trace id as an int, the caller's sampled flag or None) */
static int sample(Recorder *self, const unsigned char *trace, PyObject *caller_sampled) {
    char hex[33];
    hex_of(trace, 16, hex);
    hex[32] = 0;
    PyObject *trace_int = PyLong_FromString(hex, NULL, 16); /* only with a ratio sampler or a caller */
    if (trace_int == NULL) return -1;
    PyObject *args[3] = {self->sampler, trace_int, caller_sampled};
    PyObject *result = PyObject_VectorcallMethod(s_sample, args, 3, NULL);
    Py_DECREF(trace_int);
    if (result == NULL) return -1;
    int sampled = PyObject_IsTrue(result);
    Py_DECREF(result);
    return sampled;
}

/* Continue the caller's trace from its (parsed) SpanContext. */
static int continue_trace(Recorder *self, Spans *spans, PyObject *caller) {
    PyObject *trace_id = PyObject_GetAttr(caller, s_trace_id), *span_id = PyObject_GetAttr(caller, s_span_id),
             *sampled = PyObject_GetAttr(caller, s_sampled), *state = PyObject_GetAttr(caller, s_trace_state);
    int result = -1;
    if (trace_id == NULL || span_id == NULL || sampled == NULL || state == NULL) goto done;
    Py_ssize_t n;
    const char *text = PyUnicode_AsUTF8AndSize(trace_id, &n);
    if (text == NULL) goto done;
    unsigned char parent[8];
    if (n != 32 || unhex(text, 32, spans->trace) < 0) {
        PyErr_SetString(PyExc_ValueError, "a malformed trace id");
        goto done;
    }
    spans->trace_hex = Py_NewRef(trace_id);
    text = PyUnicode_AsUTF8AndSize(span_id, &n);
    if (text == NULL) goto done;
    if (n != 16 || unhex(text, 16, parent) < 0) {
        PyErr_SetString(PyExc_ValueError, "a malformed span id");
        goto done;
    }
    spans->parent = 0;
    for (int i = 0; i < 8; i++) spans->parent |= (uint64_t)parent[i] << (8 * i);
    uint64_t span = draw();
    spans->span = span ? span : 1;
    int decision = sample(self, spans->trace, sampled);
    if (decision < 0) goto done;
    spans->sampled = decision;
    if (PyUnicode_Check(state) && PyUnicode_GET_LENGTH(state)) spans->trace_state = Py_NewRef(state);
    result = 0;
done:
    Py_XDECREF(trace_id);
    Py_XDECREF(span_id);
    Py_XDECREF(sampled);
    Py_XDECREF(state);
    return result;
}

/* The caller's traceparent (and tracestate), parsed by propagation.py; NULL with no error when absent. */
static PyObject *caller_of(PyObject *headers) {
    if (headers == Py_None) return NULL;
    int truth = PyObject_IsTrue(headers);
    if (truth <= 0) return NULL;
    PyObject *args[2] = {headers, s_traceparent};
    PyObject *traceparent = PyObject_VectorcallMethod(s_get, args, 2, NULL);
    if (traceparent == NULL) return NULL;
    PyObject *caller = NULL;
    if (PyObject_IsTrue(traceparent) > 0) {
        args[1] = s_tracestate;
        PyObject *tracestate = PyObject_VectorcallMethod(s_get, args, 2, NULL);
        if (tracestate != NULL) {
            PyObject *call[2] = {traceparent, tracestate};
            caller = PyObject_Vectorcall(py_parse_traceparent, call, 2, NULL);
            Py_DECREF(tracestate);
        }
    }
    Py_DECREF(traceparent);
    if (caller == Py_None) Py_CLEAR(caller);
    return caller;
}

static PyObject *Recorder_request(Recorder *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "request(method, path, headers)");
        return NULL;
    }
    Spans *spans = PyObject_New(Spans, &SpansType);
    if (spans == NULL) return NULL;
    spans->start_ns = now_ns();
    spans->recorder = (Recorder *)Py_NewRef(self);
    spans->method = Py_NewRef(args[0]);
    spans->path = Py_NewRef(args[1]);
    spans->trace_state = spans->status_message = spans->events = spans->trace_hex = NULL;
    spans->extra_count = 0;
    spans->extra_capacity = INLINE_EXTRA;
    spans->extra = spans->extra_inline;
    spans->end_ns = 0;
    spans->status_code = spans->current = spans->encoded = 0;
    spans->count = 0;
    spans->capacity = INLINE_CHILDREN;
    spans->children = spans->inline_children;
    PyObject *caller = caller_of(args[2]);
    if (caller == NULL && PyErr_Occurred()) goto fail;
    if (caller == NULL) {
        uint64_t high = draw(), low = draw(), span = draw();
        if (!(high | low)) low = 1;
        for (int i = 0; i < 8; i++) {
            spans->trace[i] = (unsigned char)(high >> (56 - 8 * i));
            spans->trace[8 + i] = (unsigned char)(low >> (56 - 8 * i));
        }
        spans->span = span ? span : 1;
        spans->parent = 0;
        if (self->new_traces_sampled) {
            spans->sampled = 1;
        } else {
            int decision = sample(self, spans->trace, Py_None);
            if (decision < 0) goto fail;
            spans->sampled = decision;
        }
    } else {
        int failed = continue_trace(self, spans, caller);
        Py_DECREF(caller);
        if (failed < 0) goto fail;
    }
    if (self->current != NULL) {
        PyObject *token = PyContextVar_Set(self->current, (PyObject *)spans);
        if (token == NULL) goto fail;
        Py_DECREF(token);
    }
    return (PyObject *)spans;
fail:
    Py_DECREF(spans);
    return NULL;
}

static PyMethodDef Recorder_methods[] = {
    {"request", (PyCFunction)(void (*)(void))Recorder_request, METH_FASTCALL,
     "The request's SERVER span (``METHOD /path``), continuing the caller's W3C ``traceparent`` and "
     "``tracestate`` or starting a trace."},
    {NULL},
};

static PyMemberDef Recorder_members[] = {
    {"sampler", T_OBJECT, offsetof(Recorder, sampler), READONLY, NULL},
    {"sink", T_OBJECT, offsetof(Recorder, sink), READONLY, NULL},
    {NULL},
};

static PyTypeObject RecorderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "modelyard.otlp._request_spans.RequestRecorder",
    .tp_basicsize = sizeof(Recorder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Starts requests' span records (request_spans.RequestRecorder, compiled).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Recorder_init,
    .tp_traverse = (traverseproc)Recorder_traverse,
    .tp_clear = (inquiry)Recorder_clear,
    .tp_dealloc = (destructor)Recorder_dealloc,
    .tp_methods = Recorder_methods,
    .tp_members = Recorder_members,
};

/* ---- a batch ------------------------------------------------------------------------------------- */

/* ``encode_fields(items, encoder)``: each item's spans as ScopeSpans.spans fields (bytes pass through),
 * the exporter's loop over a batch: records are encoded without a method call each. */

static PyObject *encode_fields(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "encode_fields(items: list, encoder)");
        return NULL;
    }
    PyObject *items = args[0], *encoder = args[1];
    Py_ssize_t n = PyList_GET_SIZE(items);
    PyObject *out = PyList_New(n);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(items, i), *fields;
        if (Py_IS_TYPE(item, &SpansType))
            fields = Spans_fields((Spans *)item, encoder);
        else if (PyBytes_CheckExact(item))
            fields = Py_NewRef(item);
        else
            fields = PyObject_CallMethodOneArg(item, s_fields, encoder);
        if (fields == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, fields);
    }
    return out;
}

static PyMethodDef module_functions[] = {
    {"encode_fields", (PyCFunction)(void (*)(void))encode_fields, METH_FASTCALL,
     "Each item's spans as ScopeSpans.spans fields: records are encoded, bytes pass through."},
    {NULL},
};

/* ---- module -------------------------------------------------------------------------------------- */

static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_request_spans",
                             "The router's span recorder (request_spans.py), compiled.", -1, module_functions};

static int intern(PyObject **slot, const char *text) {
    *slot = PyUnicode_InternFromString(text);
    return *slot == NULL ? -1 : 0;
}

PyMODINIT_FUNC PyInit__request_spans(void) {
    for (int b = 0; b < 256; b++) {
        HEX_PAIRS[2 * b] = "0123456789abcdef"[b >> 4];
        HEX_PAIRS[2 * b + 1] = "0123456789abcdef"[b & 15];
    }
    seed();
    if (pthread_atfork(NULL, NULL, seed) != 0) {
        PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
        return NULL;
    }
    if (intern(&s_traceparent, "traceparent") < 0 || intern(&s_tracestate, "tracestate") < 0
        || intern(&s_get, "get") < 0 || intern(&s_items, "items") < 0 || intern(&s_piece, "piece") < 0
        || intern(&s_tail, "tail") < 0 || intern(&s_pieces, "pieces") < 0 || intern(&s_sample, "sample") < 0
        || intern(&s_ratio, "ratio") < 0 || intern(&s_fields, "fields") < 0 || intern(&s_trace_id, "trace_id") < 0
        || intern(&s_span_id, "span_id") < 0 || intern(&s_sampled, "sampled") < 0
        || intern(&s_trace_state, "trace_state") < 0 || intern(&s_method_key, "http.request.method") < 0
        || intern(&s_path_key, "url.path") < 0 || intern(&s_empty, "") < 0)
        return NULL;
    PyObject *python = PyImport_ImportModule("modelyard.otlp.request_spans");
    if (python == NULL) return NULL;
    py_exception = PyObject_GetAttrString(python, "_exception");
    py_error_message = PyObject_GetAttrString(python, "_error_message");
    Py_DECREF(python);
    PyObject *propagation = PyImport_ImportModule("modelyard.otlp.propagation");
    if (propagation == NULL) return NULL;
    py_parse_traceparent = PyObject_GetAttrString(propagation, "parse_traceparent");
    Py_DECREF(propagation);
    if (py_exception == NULL || py_error_message == NULL || py_parse_traceparent == NULL) return NULL;
    if (PyType_Ready(&SpansType) < 0 || PyType_Ready(&RecorderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "RequestSpans", (PyObject *)&SpansType) < 0
        || PyModule_AddObjectRef(m, "RequestRecorder", (PyObject *)&RecorderType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
