/* shim.c - the runner behind tests/tsan_shim/criterion/criterion.h. */
#include "criterion/criterion.h"

#include <signal.h>
#include <stdarg.h>
#include <sys/wait.h>
#include <unistd.h>

static struct shim_test *tests;
static struct shim_suite *suites;
static const struct shim_test *current;

void shim_register(struct shim_test *t)
{
    t->next = tests;
    tests = t;
}

void shim_register_suite(struct shim_suite *s)
{
    s->next = suites;
    suites = s;
}

static const struct shim_suite *suite_of(const struct shim_test *t)
{
    for (const struct shim_suite *s = suites; s; s = s->next)
        if (strcmp(s->name, t->suite) == 0)
            return s;
    return NULL;
}

static void run_fini(void)
{
    const struct shim_test *t = current;
    current = NULL;
    if (!t)
        return;
    const struct shim_suite *s = suite_of(t);
    if (t->opts.fini)
        t->opts.fini();
    if (s && s->opts.fini)
        s->opts.fini();
}

void shim_fail(const char *file, int line, const char *expr, const char *fmt, ...)
{
    fprintf(stderr, "[----] %s:%d: Assertion Failed: %s\n[----]   ", file, line, expr);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    run_fini();
    exit(1);
}

void shim_skip(const char *fmt, ...)
{
    fprintf(stderr, "[SKIP] ");
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    run_fini();
    exit(77);
}

int main(int argc, char **argv)
{
    const char *filter = NULL;
    for (int i = 1; i < argc; i++)
        if (strncmp(argv[i], "--filter=", 9) == 0)
            filter = argv[i] + 9;
    /* Registration order is reversed by the constructors: restore it. */
    struct shim_test *ordered = NULL;
    while (tests) {
        struct shim_test *t = tests;
        tests = t->next;
        t->next = ordered;
        ordered = t;
    }
    int passed = 0, failed = 0, skipped = 0;
    for (struct shim_test *t = ordered; t; t = t->next) {
        char full[256];
        snprintf(full, sizeof full, "%s::%s", t->suite, t->name);
        if ((filter && !strstr(full, filter)) || t->opts.disabled)
            continue;
        const struct shim_suite *s = suite_of(t);
        double timeout = t->opts.timeout ? t->opts.timeout
                         : s && s->opts.timeout ? s->opts.timeout
                                                : 600;
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            alarm((unsigned)timeout + 1);
            current = t;
            if (s && s->opts.init)
                s->opts.init();
            if (t->opts.init)
                t->opts.init();
            t->fn();
            run_fini();
            exit(0);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
            passed++;
            fprintf(stderr, "[PASS] %s\n", full);
        } else if (WIFEXITED(status) && WEXITSTATUS(status) == 77) {
            skipped++;
        } else {
            failed++;
            if (WIFSIGNALED(status))
                fprintf(stderr, "[FAIL] %s: killed by signal %d%s\n", full, WTERMSIG(status),
                        WTERMSIG(status) == SIGALRM ? " (timeout)" : "");
            else
                fprintf(stderr, "[FAIL] %s: exit code %d\n", full, WEXITSTATUS(status));
        }
    }
    fprintf(stderr, "[====] Synthesis: Tested: %d | Passing: %d | Failing: %d | Crashing: 0\n",
            passed + failed, passed, failed);
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
