/* An application that embeds CPython through its shared libpython (the way uWSGI,
 * Blender or a C++ service does): runs the script argv[1] with the rest as sys.argv. */
#include <Python.h>
#include <stdio.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s script.py [args...]\n", argv[0]);
        return 2;
    }
    PyConfig config;
    PyConfig_InitPythonConfig(&config);
    config.parse_argv = 0; /* sys.argv is argv[1:], the script first */
    PyStatus status = PyConfig_SetBytesArgv(&config, argc - 1, argv + 1);
    if (!PyStatus_Exception(status)) status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) Py_ExitStatusException(status);
    FILE *f = fopen(argv[1], "r");
    if (!f) { perror(argv[1]); return 2; }
    int rc = PyRun_SimpleFileEx(f, argv[1], 1);
    Py_Finalize();
    return rc == 0 ? 0 : 1;
}
