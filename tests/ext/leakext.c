/* A tiny C extension for leakscope's tests: three static types allocated the way C
 * extensions do it, through the exported API (PyObject_New / PyObject_GC_New), i.e.
 * through this module's PLT. Built by the tests with the target interpreter's headers. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

typedef struct { PyObject_HEAD long value; } Blob;
typedef struct { PyObject_HEAD PyObject *ref; } Node;

static void blob_dealloc(PyObject *self) { PyObject_Free(self); }

static int node_traverse(Node *self, visitproc visit, void *arg) { Py_VISIT(self->ref); return 0; }
static int node_clear(Node *self) { Py_CLEAR(self->ref); return 0; }
static void node_dealloc(Node *self) {
    PyObject_GC_UnTrack(self);
    node_clear(self);
    PyObject_GC_Del(self);
}

static PyTypeObject BlobType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "leakext.Blob",
    .tp_basicsize = sizeof(Blob),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = blob_dealloc,
};

static PyTypeObject NodeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "leakext.Node",
    .tp_basicsize = sizeof(Node),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)node_dealloc,
    .tp_traverse = (traverseproc)node_traverse,
    .tp_clear = (inquiry)node_clear,
};

static PyObject *blob(PyObject *mod, PyObject *arg) {
    Blob *b = PyObject_New(Blob, &BlobType);
    if (b) b->value = PyLong_AsLong(arg);
    return (PyObject *)b;
}

static PyObject *node(PyObject *mod, PyObject *arg) {
    Node *n = PyObject_GC_New(Node, &NodeType);
    if (!n) return NULL;
    Py_INCREF(arg);
    n->ref = arg;
    PyObject_GC_Track(n);
    return (PyObject *)n;
}

/* A C-level holder: no GC support, so the collector never sees the reference it keeps (a
 * callback, say). Holding its owner's bound method makes a cycle the collector cannot
 * break: owner -> handle -> bound method -> owner. */
typedef struct { PyObject_HEAD PyObject *callback; long id; } Handle;

static void handle_dealloc(Handle *self) {
    Py_XDECREF(self->callback);
    PyObject_Free(self);
}

static PyTypeObject HandleType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "leakext.Handle",
    .tp_basicsize = sizeof(Handle),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)handle_dealloc,
};

static PyObject *handle(PyObject *mod, PyObject *callback) {
    static long next_id = 0;
    Handle *h = PyObject_New(Handle, &HandleType);
    if (!h) return NULL;
    Py_INCREF(callback);
    h->callback = callback;
    h->id = next_id++;
    return (PyObject *)h;
}

static PyMethodDef methods[] = {
    {"handle", handle, METH_O, "A new leakext.Handle keeping callback (no GC support)."},
    {"blob", blob, METH_O, "A new leakext.Blob (PyObject_New)."},
    {"node", node, METH_O, "A new leakext.Node holding arg (PyObject_GC_New)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "leakext", NULL, -1, methods};

PyMODINIT_FUNC PyInit_leakext(void) {
    if (PyType_Ready(&BlobType) < 0 || PyType_Ready(&NodeType) < 0 ||
        PyType_Ready(&HandleType) < 0)
        return NULL;
    return PyModule_Create(&module);
}
