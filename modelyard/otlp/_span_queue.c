/* The loop exporter's queue (span_queue.py), compiled: the router calls it once per traced request, as the
 * recorder's sink, and the exporter takes its batches from it. span_queue.py is the reference;
 * tests/unit/otlp/test_span_queue.py holds both to the same behaviour.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

typedef struct {
    PyObject *item; /* a record, or encoded spans (bytes) */
    Py_ssize_t count;
} Pending;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall; /* calls without a tuple of arguments: the sink runs once per request */
    PyObject *notify;
    Pending *ring; /* max_queue slots: every item holds a span at least */
    Py_ssize_t head, length, capacity;
    Py_ssize_t max_queue, max_batch, queued, dropped;
    int started, stopping;
} Queue;

static PyObject *Queue_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames);

static PyObject *Queue_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    Queue *self = (Queue *)type->tp_alloc(type, 0);
    if (self != NULL) self->vectorcall = Queue_vectorcall;
    return (PyObject *)self;
}

static int Queue_init(Queue *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"max_queue", "max_batch", "notify", NULL};
    Py_ssize_t max_queue, max_batch;
    PyObject *notify;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "nnO", names, &max_queue, &max_batch, &notify)) return -1;
    if (max_queue < 1 || max_batch < 1) {
        PyErr_SetString(PyExc_ValueError, "max_queue and max_batch must be positive");
        return -1;
    }
    if (self->ring != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a SpanQueue is initialised once");
        return -1;
    }
    self->ring = PyMem_Calloc(max_queue, sizeof(Pending));
    if (self->ring == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->capacity = self->max_queue = max_queue;
    self->max_batch = max_batch < max_queue ? max_batch : max_queue;
    self->notify = Py_NewRef(notify);
    return 0;
}

static int Queue_traverse(Queue *self, visitproc visit, void *arg) {
    Py_VISIT(self->notify);
    for (Py_ssize_t i = 0; i < self->length; i++) Py_VISIT(self->ring[(self->head + i) % self->capacity].item);
    return 0;
}

static int Queue_clear(Queue *self) {
    Py_CLEAR(self->notify);
    for (Py_ssize_t i = 0; i < self->length; i++) Py_CLEAR(self->ring[(self->head + i) % self->capacity].item);
    self->length = self->queued = 0;
    return 0;
}

static void Queue_dealloc(Queue *self) {
    PyObject_GC_UnTrack(self);
    Queue_clear(self);
    PyMem_Free(self->ring);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *call_notify(Queue *self) {
    PyObject *result = PyObject_CallNoArgs(self->notify);
    if (result == NULL) return NULL;
    Py_DECREF(result);
    Py_RETURN_NONE;
}

/* The sink: ``queue(item, count)``. */
static PyObject *Queue_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Queue *self = (Queue *)callable;
    if (PyVectorcall_NARGS(nargsf) != 2 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "queue(item, count)");
        return NULL;
    }
    Py_ssize_t count = PyLong_AsSsize_t(args[1]);
    if (count == -1 && PyErr_Occurred()) return NULL;
    if (self->ring == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the SpanQueue was not initialised");
        return NULL;
    }
    if (self->queued >= self->max_queue || self->stopping || self->length == self->capacity) {
        self->dropped += count;
        Py_RETURN_NONE;
    }
    Pending *slot = &self->ring[(self->head + self->length) % self->capacity];
    slot->item = Py_NewRef(args[0]);
    slot->count = count;
    self->length++;
    self->queued += count;
    if (!self->started || (self->queued >= self->max_batch && self->max_batch > self->queued - count))
        return call_notify(self);
    Py_RETURN_NONE;
}

/* ``take(limit)``: (items, spans) from the front, as many items as fit ``limit`` spans (one at least). */
static PyObject *Queue_take(Queue *self, PyObject *arg) {
    Py_ssize_t limit = PyLong_AsSsize_t(arg);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t n = 0, size = 0;
    while (n < self->length) {
        Py_ssize_t count = self->ring[(self->head + n) % self->capacity].count;
        if (n && size + count > limit) break;
        size += count;
        n++;
    }
    PyObject *items = PyList_New(n);
    if (items == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        Pending *slot = &self->ring[self->head];
        PyList_SET_ITEM(items, i, slot->item); /* the queue's reference moves to the list */
        slot->item = NULL;
        self->head = (self->head + 1) % self->capacity;
    }
    self->length -= n;
    self->queued -= size;
    PyObject *result = Py_BuildValue("(Nn)", items, size);
    return result;
}

static Py_ssize_t Queue_len(Queue *self) { return self->length; }

static PyMethodDef Queue_methods[] = {
    {"take", (PyCFunction)Queue_take, METH_O,
     "(items, spans) from the front: as many items as fit ``limit`` spans (one at least)."},
    {NULL},
};

static PyMemberDef Queue_members[] = {
    {"queued", T_PYSSIZET, offsetof(Queue, queued), READONLY, "spans queued"},
    {"dropped", T_PYSSIZET, offsetof(Queue, dropped), 0, "spans lost to a full queue"},
    {"max_queue", T_PYSSIZET, offsetof(Queue, max_queue), READONLY, NULL},
    {"max_batch", T_PYSSIZET, offsetof(Queue, max_batch), READONLY, NULL},
    {"started", T_BOOL, offsetof(Queue, started), 0, "the exporter's task runs: notify only for full batches"},
    {"stopping", T_BOOL, offsetof(Queue, stopping), 0, "closing: new items are dropped"},
    {NULL},
};

static PySequenceMethods Queue_as_sequence = {.sq_length = (lenfunc)Queue_len};

static PyTypeObject QueueType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "modelyard.otlp._span_queue.SpanQueue",
    .tp_basicsize = sizeof(Queue),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Ended requests waiting for the loop exporter (span_queue.SpanQueue, compiled).",
    .tp_new = Queue_new,
    .tp_init = (initproc)Queue_init,
    .tp_traverse = (traverseproc)Queue_traverse,
    .tp_clear = (inquiry)Queue_clear,
    .tp_dealloc = (destructor)Queue_dealloc,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = 0, /* set at import */
    .tp_methods = Queue_methods,
    .tp_members = Queue_members,
    .tp_as_sequence = &Queue_as_sequence,
};

/* ---- module -------------------------------------------------------------------------------------- */

static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_span_queue", "The loop exporter's queue (span_queue.py), compiled.",
                             -1, NULL};

PyMODINIT_FUNC PyInit__span_queue(void) {
    QueueType.tp_vectorcall_offset = offsetof(Queue, vectorcall);
    if (PyType_Ready(&QueueType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "SpanQueue", (PyObject *)&QueueType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
