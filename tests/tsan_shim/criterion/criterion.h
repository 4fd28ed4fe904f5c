/*
 * A minimal stand-in for <criterion/criterion.h>, used only by the
 * ThreadSanitizer build.
 *
 * Why: Criterion cannot start under ThreadSanitizer (its boxfort arena
 * mapping collides with TSan's shadow memory: "Could not initialize
 * inheritable arena", Snaipe/Criterion#274). The TSan build puts this
 * directory first on the include path instead, so the very same test files
 * run under TSan. It implements the subset the suite uses: Test, TestSuite
 * (.init, .fini, .timeout), cr_assert*, cr_skip_test, with each test in a
 * forked child (as Criterion does), one at a time. It prints Criterion's
 * "Synthesis" line and the plain "N passed, N failed" line.
 */
#ifndef MPX_TSAN_CRITERION_SHIM_H
#define MPX_TSAN_CRITERION_SHIM_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct shim_opts {
    int unused_;
    void (*init)(void);
    void (*fini)(void);
    double timeout;
    int disabled;
};

struct shim_test {
    const char *suite, *name;
    void (*fn)(void);
    struct shim_opts opts;
    struct shim_test *next;
};

struct shim_suite {
    const char *name;
    struct shim_opts opts;
    struct shim_suite *next;
};

void shim_register(struct shim_test *t);
void shim_register_suite(struct shim_suite *s);
void shim_fail(const char *file, int line, const char *expr, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 4, 5)));
void shim_skip(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

#define Test(suite, name, ...)                                                         \
    static void suite##_##name##_impl(void);                                           \
    static struct shim_test suite##_##name##_desc = {                                  \
        #suite, #name, suite##_##name##_impl, {0, __VA_ARGS__}, NULL};                 \
    __attribute__((constructor)) static void suite##_##name##_reg(void)                \
    {                                                                                  \
        shim_register(&suite##_##name##_desc);                                         \
    }                                                                                  \
    static void suite##_##name##_impl(void)

#define TestSuite(suite, ...)                                                          \
    static struct shim_suite suite##_suite_desc = {#suite, {0, __VA_ARGS__}, NULL};    \
    __attribute__((constructor)) static void suite##_suite_reg(void)                   \
    {                                                                                  \
        shim_register_suite(&suite##_suite_desc);                                      \
    }

#define cr_assert(cond, ...)                                                           \
    do {                                                                               \
        if (!(cond))                                                                   \
            shim_fail(__FILE__, __LINE__, #cond, " " __VA_ARGS__);                      \
    } while (0)
#define cr_assert_fail(...) shim_fail(__FILE__, __LINE__, "fail", " " __VA_ARGS__)
#define cr_assert_eq(a, b, ...) cr_assert((a) == (b), __VA_ARGS__)
#define cr_assert_neq(a, b, ...) cr_assert((a) != (b), __VA_ARGS__)
#define cr_assert_lt(a, b, ...) cr_assert((a) < (b), __VA_ARGS__)
#define cr_assert_gt(a, b, ...) cr_assert((a) > (b), __VA_ARGS__)
#define cr_assert_geq(a, b, ...) cr_assert((a) >= (b), __VA_ARGS__)
#define cr_assert_leq(a, b, ...) cr_assert((a) <= (b), __VA_ARGS__)
#define cr_assert_null(p, ...) cr_assert((p) == NULL, __VA_ARGS__)
#define cr_assert_not_null(p, ...) cr_assert((p) != NULL, __VA_ARGS__)
#define cr_assert_str_eq(a, b, ...) cr_assert(strcmp((a), (b)) == 0, __VA_ARGS__)
#define cr_skip_test(...) shim_skip(" " __VA_ARGS__)
#define cr_log_info(...) (fprintf(stderr, __VA_ARGS__), fputc('\n', stderr))

#endif
