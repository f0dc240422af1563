/* A C extension whose native memory leaks: the end-to-end tests of `--native` compile it
 * with the usual -O2 and no frame pointers (-fomit-frame-pointer), against the target
 * interpreter's headers.
 *
 * - leak(n): mallocs n bytes in leak_buffer and never frees them;
 * - churn(n): mallocs n bytes in churn_buffer and frees them again;
 * - State(): an object whose constructor callocs 256 bytes of native state that its
 *   dealloc never frees;
 * - hold(obj): takes a reference to obj and never releases it (a reference-count leak);
 * - leak_aligned(n): posix_memalign's n bytes, never freed;
 * - leak_mapping(n): an anonymous mmap of n bytes, never unmapped; churn_mapping(n): one
 *   mapped and unmapped again;
 * - start_thread_leak(n): starts a C thread (no Python thread state, no GIL) that mallocs
 *   n bytes every 10 ms and never frees them;
 * - leak_pymem(n) / leak_raw(n): n bytes from the interpreter's PyMem_Malloc (pymalloc's
 *   pools for small n) / PyMem_RawMalloc, never freed; churn_pymem(n): PyMem_Malloc'd and
 *   PyMem_Free'd again;
 * - leak_inlined(n): mallocs n bytes in a function inlined into another, never freed;
 * - Buffer(n): an object that mallocs n bytes of data and frees them in its dealloc (the
 *   data is the object's: counted with it while it lives).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <pthread.h>
#include <time.h>

/* Where the blocks escape to, so that the compiler keeps every malloc. */
void *volatile nativeleak_last;

__attribute__((noinline)) static void *leak_buffer(size_t n) {
    char *p = malloc(n); /* NATIVE_MALLOC */
    if (p)
        memset(p, 0x5a, n);
    nativeleak_last = p;
    return p;
}

__attribute__((noinline)) static void churn_buffer(size_t n) {
    char *p = malloc(n); /* NATIVE_CHURN_MALLOC */
    if (!p)
        return;
    memset(p, 0xa5, n);
    nativeleak_last = p;
    free(p);
}

static PyObject *nativeleak_leak(PyObject *self, PyObject *arg) {
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n < 0 && PyErr_Occurred())
        return NULL;
    if (!leak_buffer((size_t)n))
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *nativeleak_churn(PyObject *self, PyObject *arg) {
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n < 0 && PyErr_Occurred())
        return NULL;
    churn_buffer((size_t)n);
    Py_RETURN_NONE;
}

__attribute__((noinline)) static void *aligned_buffer(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, n) != 0) /* ALIGNED_ALLOC */
        return NULL;
    memset(p, 0x11, n);
    nativeleak_last = p;
    return p;
}

__attribute__((noinline)) static void *map_region(size_t n) {
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0); /* MMAP_ALLOC */
    if (p == MAP_FAILED)
        return NULL;
    memset(p, 0x22, 64);
    nativeleak_last = p;
    return p;
}

static PyObject *nativeleak_leak_aligned(PyObject *self, PyObject *arg) {
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n < 0 && PyErr_Occurred())
        return NULL;
    if (!aligned_buffer((size_t)n))
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *nativeleak_leak_mapping(PyObject *self, PyObject *arg) {
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n < 0 && PyErr_Occurred())
        return NULL;
    if (!map_region((size_t)n))
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *nativeleak_churn_mapping(PyObject *self, PyObject *arg) {
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n < 0 && PyErr_Occurred())
        return NULL;
    void *p = map_region((size_t)n);
    if (p)
        munmap(p, (size_t)n);
    Py_RETURN_NONE;
}

__attribute__((noinline)) static void *leak_in_thread(size_t n) {
    char *p = malloc(n); /* THREAD_MALLOC */
    if (p)
        memset(p, 0x33, n);
    nativeleak_last = p;
    return p;
}

static void *thread_main(void *arg) {
    size_t n = (size_t)arg;
    struct timespec tick = {0, 10 * 1000 * 1000};
    for (;;) {
        leak_in_thread(n);
        nanosleep(&tick, NULL);
    }
    return NULL;
}

static PyObject *nativeleak_start_thread_leak(PyObject *self, PyObject *arg) {
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n < 0 && PyErr_Occurred())
        return NULL;
    pthread_t t;
    if (pthread_create(&t, NULL, thread_main, (void *)(size_t)n) != 0)
        return PyErr_NoMemory();
    pthread_detach(t);
    Py_RETURN_NONE;
}

__attribute__((noinline)) static void *pymem_buffer(size_t n) {
    char *p = PyMem_Malloc(n); /* PYMEM_MALLOC */
    if (p)
        memset(p, 0x44, n);
    nativeleak_last = p;
    return p;
}

__attribute__((noinline)) static void *raw_buffer(size_t n) {
    char *p = PyMem_RawMalloc(n); /* RAW_MALLOC */
    if (p)
        memset(p, 0x55, n);
    nativeleak_last = p;
    return p;
}

__attribute__((noinline)) static void pymem_churn(size_t n) {
    char *p = PyMem_Malloc(n); /* PYMEM_CHURN_MALLOC */
    if (!p)
        return;
    memset(p, 0x66, n);
    nativeleak_last = p;
    PyMem_Free(p);
}

/* Always inlined into leak_inlined: its malloc is one address in leak_inlined's code,
 * which DWARF's inline records say is in inlined_alloc, called at INLINED_CALL. */
static inline __attribute__((always_inline)) void *inlined_alloc(size_t n) {
    char *p = malloc(n); /* INLINED_MALLOC */
    if (p)
        memset(p, 0x88, n);
    return p;
}

__attribute__((noinline)) static void *leak_inlined(size_t n) {
    void *p = inlined_alloc(n); /* INLINED_CALL */
    nativeleak_last = p;
    return p;
}

static PyObject *nativeleak_leak_inlined(PyObject *self, PyObject *arg) {
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n < 0 && PyErr_Occurred())
        return NULL;
    if (!leak_inlined((size_t)n))
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *nativeleak_leak_pymem(PyObject *self, PyObject *arg) {
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n < 0 && PyErr_Occurred())
        return NULL;
    if (!pymem_buffer((size_t)n))
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *nativeleak_leak_raw(PyObject *self, PyObject *arg) {
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n < 0 && PyErr_Occurred())
        return NULL;
    if (!raw_buffer((size_t)n))
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *nativeleak_churn_pymem(PyObject *self, PyObject *arg) {
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n < 0 && PyErr_Occurred())
        return NULL;
    pymem_churn((size_t)n);
    Py_RETURN_NONE;
}

typedef struct {
    PyObject_HEAD
    void *data;
    size_t size;
} BufferObject;

__attribute__((noinline)) static void *buffer_alloc(size_t n) {
    char *p = malloc(n); /* BUFFER_MALLOC */
    if (p)
        memset(p, 0x77, n);
    return p;
}

static PyObject *Buffer_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n", &n))
        return NULL;
    BufferObject *o = (BufferObject *)type->tp_alloc(type, 0);
    if (!o)
        return NULL;
    o->size = (size_t)n;
    o->data = buffer_alloc(o->size);
    if (!o->data) {
        Py_DECREF(o);
        return PyErr_NoMemory();
    }
    return (PyObject *)o;
}

static void Buffer_dealloc(BufferObject *o) {
    free(o->data);
    Py_TYPE(o)->tp_free((PyObject *)o);
}

static PyTypeObject BufferType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "nativeleak.Buffer",
    .tp_basicsize = sizeof(BufferObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Buffer_new,
    .tp_dealloc = (destructor)Buffer_dealloc,
};

static PyObject *nativeleak_hold(PyObject *self, PyObject *obj) {
    Py_INCREF(obj); /* never released */
    Py_RETURN_NONE;
}

typedef struct {
    PyObject_HEAD
    void *state;
} StateObject;

__attribute__((noinline)) static void *state_alloc(void) {
    void *s = calloc(1, 256); /* STATE_CALLOC */
    nativeleak_last = s;
    return s;
}

static PyObject *State_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    StateObject *o = (StateObject *)type->tp_alloc(type, 0);
    if (!o)
        return NULL;
    o->state = state_alloc();
    if (!o->state) {
        Py_DECREF(o);
        return PyErr_NoMemory();
    }
    return (PyObject *)o;
}

static void State_dealloc(StateObject *o) {
    /* The leak: o->state is never freed. */
    Py_TYPE(o)->tp_free((PyObject *)o);
}

static PyTypeObject StateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "nativeleak.State",
    .tp_basicsize = sizeof(StateObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = State_new,
    .tp_dealloc = (destructor)State_dealloc,
};

static PyMethodDef methods[] = {
    {"leak", nativeleak_leak, METH_O, "malloc n bytes and never free them"},
    {"churn", nativeleak_churn, METH_O, "malloc n bytes and free them"},
    {"hold", nativeleak_hold, METH_O, "take a reference to obj and never release it"},
    {"leak_aligned", nativeleak_leak_aligned, METH_O, "posix_memalign n bytes, never freed"},
    {"leak_mapping", nativeleak_leak_mapping, METH_O, "mmap n bytes, never unmapped"},
    {"churn_mapping", nativeleak_churn_mapping, METH_O, "mmap n bytes and unmap them"},
    {"leak_inlined", nativeleak_leak_inlined, METH_O,
     "malloc n bytes in an inlined function, never freed"},
    {"leak_pymem", nativeleak_leak_pymem, METH_O, "PyMem_Malloc n bytes, never freed"},
    {"leak_raw", nativeleak_leak_raw, METH_O, "PyMem_RawMalloc n bytes, never freed"},
    {"churn_pymem", nativeleak_churn_pymem, METH_O, "PyMem_Malloc n bytes and PyMem_Free them"},
    {"start_thread_leak", nativeleak_start_thread_leak, METH_O,
     "a C thread that mallocs n bytes every 10 ms, never freed"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "nativeleak", NULL, -1, methods,
};

PyMODINIT_FUNC PyInit_nativeleak(void) {
    if (PyType_Ready(&StateType) < 0 || PyType_Ready(&BufferType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    Py_INCREF(&StateType);
    if (PyModule_AddObject(m, "State", (PyObject *)&StateType) < 0) {
        Py_DECREF(&StateType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&BufferType);
    if (PyModule_AddObject(m, "Buffer", (PyObject *)&BufferType) < 0) {
        Py_DECREF(&BufferType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
