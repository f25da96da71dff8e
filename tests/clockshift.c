/* The clock jump of the fault suite (tests/test_faults.py): an LD_PRELOAD library that shifts
 * the wall clock of the process it is loaded into by the seconds written in the file named by
 * CG_CLOCK_SHIFT_FILE (re-read at most every 50 ms), as an NTP step or a reset RTC would.
 * Only the wall clock moves (CLOCK_REALTIME and what is built on it); the monotonic clock goes
 * on undisturbed, as it does on a real machine. Debian's libfaketime was tried first: its
 * clock_nanosleep wrapper makes Python's time.sleep fail with EINVAL after a backward jump. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static int (*real_clock_gettime)(clockid_t, struct timespec *);
static _Atomic long long shift_ns;
static _Atomic long long read_at_ns = -1;

static long long mono_ns(void) {
    struct timespec t;
    real_clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void refresh(void) {
    const char *path = getenv("CG_CLOCK_SHIFT_FILE");
    if (path == NULL) return;
    long long now = mono_ns();
    long long last = atomic_load(&read_at_ns);
    if (last >= 0 && now - last < 50000000LL) return;
    atomic_store(&read_at_ns, now);
    FILE *f = fopen(path, "r");
    if (f == NULL) return;
    double seconds;
    if (fscanf(f, "%lf", &seconds) == 1) atomic_store(&shift_ns, (long long)(seconds * 1e9));
    fclose(f);
}

int clock_gettime(clockid_t clk, struct timespec *tp) {
    if (real_clock_gettime == NULL)
        real_clock_gettime = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int rc = real_clock_gettime(clk, tp);
    if (rc == 0 && (clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_COARSE)) {
        refresh();
        long long ns = tp->tv_sec * 1000000000LL + tp->tv_nsec + atomic_load(&shift_ns);
        tp->tv_sec = ns / 1000000000LL;
        tp->tv_nsec = ns % 1000000000LL;
        if (tp->tv_nsec < 0) {
            tp->tv_nsec += 1000000000LL;
            tp->tv_sec -= 1;
        }
    }
    return rc;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out != NULL) *out = ts.tv_sec;
    return ts.tv_sec;
}
