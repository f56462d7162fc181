/*
 * A stand-in librknnrt.so for the emulated board (see tests/emulated/README.md).
 *
 * It exports Rockchip's public C API (rknn_api.h, 64-bit) and behaves like the runtime as far
 * as a caller can see, without an NPU:
 *   - the version line a board's file holds ("librknnrt version: X (build)"), compiled in, and
 *     the driver version read from the board's debugfs file, for RKNN_QUERY_SDK_VERSION;
 *   - the SoC from /proc/device-tree/compatible: a model for another NPU family, a model newer
 *     than a <= 1.5.0 runtime, a missing NPU device node fail rknn_init as the real one does;
 *   - tensor attributes of the loaded model, from a sidecar file keyed by the SHA-256 of the
 *     model bytes (written by the tests from rkserve's own .rknn reader);
 *   - outputs replayed from records keyed by the SHA-256 of the input bytes (NHWC order);
 *     an input without a record fails rknn_run with STANDIN_ERR_NO_RECORD and a log line;
 *   - any call can be made to fail with a chosen code (or hang), from its Nth call on;
 *   - every call is traced to a log file, with the NPU core that ran each inference.
 *
 * Settings: KEY=VALUE lines in /etc/rknn-standin.conf (of the emulated root), overridden by
 * environment variables of the same names:
 *   RKNN_STANDIN_DIR   folder of <model-sha>.model sidecars and <model-sha>/<input-sha>.out
 *                      records (default /var/lib/rknn-standin)
 *   RKNN_STANDIN_LOG   file the call trace is appended to (default: none)
 *   RKNN_STANDIN_RUN_MS  milliseconds each rknn_run takes (default 0), to make overlap visible
 *   RKNN_STANDIN_FAIL  comma-separated CALL=CODE[@N[+]] (CODE an integer or "hang"): every
 *                      call, only the Nth, or the Nth and later ("rknn_run=hang@2",
 *                      "rknn_outputs_get=-1@3+"); read at every call
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "rknn_abi.h"
#include "sha256.h"

#ifndef STANDIN_VERSION
#define STANDIN_VERSION "2.3.0"
#endif
#ifndef STANDIN_BUILD
#define STANDIN_BUILD "c949ad889d@2024-11-07T11:35:33"
#endif

#define EXPORT __attribute__((visibility("default")))
#define STANDIN_ERR_NO_RECORD (-1001) /* no code of the real runtime: a replay miss */
#define MAX_IO 16
#define MAX_CONTEXTS 1024
#define MAX_FAILS 16

/* What `strings /usr/lib/librknnrt.so | grep "librknnrt version"` finds on a board. */
__attribute__((used)) static const char VERSION_LINE[] =
    "librknnrt version: " STANDIN_VERSION " (" STANDIN_BUILD ")";

typedef struct {
    char name[RKNN_MAX_NAME_LEN];
    uint32_t n_dims, dims[RKNN_MAX_DIMS];
    int fmt, type, qnt;
    int32_t zp;
    float scale;
} tensor;

typedef struct {
    char sha[65];
    uint32_t n_in, n_out;
    tensor in[MAX_IO], out[MAX_IO];
    uint8_t *input[MAX_IO]; /* canonical (NHWC) bytes from rknn_inputs_set */
    size_t input_size[MAX_IO];
    int input_type[MAX_IO];
    float *result; /* replayed outputs, concatenated */
    int have_result;
    int core_mask;
    int busy;
    int64_t last_run_us;
} context;

typedef struct {
    char call[48];
    int code, hang, onward;
    long from, count;
} failure;

static struct {
    char dir[512], log[512];
    long run_ms;
    failure fails[MAX_FAILS];
    int n_fails;
    char soc[32];
    int cores;
    char driver[64];
} cfg;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static context *contexts[MAX_CONTEXTS];
static unsigned next_core;

/* ---------------------------------------------------------------- logging */

static void trace(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void trace(const char *fmt, ...)
{
    if (!cfg.log[0])
        return;
    FILE *f = fopen(cfg.log, "a");
    if (!f)
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(f, "[%d] ", (int)getpid());
    vfprintf(f, fmt, ap);
    fputc('\n', f);
    va_end(ap);
    fclose(f);
}

/* The runtime's own log format: "E RKNN: [hh:mm:ss.mmm] message" on stderr. */
static void rt_log(char level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void rt_log(char level, const char *fmt, ...)
{
    char message[1024];
    struct timeval tv;
    struct tm tm;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    gettimeofday(&tv, NULL);
    localtime_r(&tv.tv_sec, &tm);
    fprintf(stderr, "%c RKNN: [%02d:%02d:%02d.%03d] %s\n", level, tm.tm_hour, tm.tm_min,
            tm.tm_sec, (int)(tv.tv_usec / 1000), message);
    fflush(stderr);
    trace("log %c %s", level, message);
}

/* ---------------------------------------------------------------- settings and board */

static void set_key(const char *key, const char *value)
{
    if (!strcmp(key, "RKNN_STANDIN_DIR"))
        snprintf(cfg.dir, sizeof cfg.dir, "%s", value);
    else if (!strcmp(key, "RKNN_STANDIN_LOG"))
        snprintf(cfg.log, sizeof cfg.log, "%s", value);
    else if (!strcmp(key, "RKNN_STANDIN_RUN_MS"))
        cfg.run_ms = atol(value);
    else if (!strcmp(key, "RKNN_STANDIN_FAIL")) {
        char copy[1024], *save = NULL;
        snprintf(copy, sizeof copy, "%s", value);
        cfg.n_fails = 0;
        for (char *item = strtok_r(copy, ",", &save); item && cfg.n_fails < MAX_FAILS;
             item = strtok_r(NULL, ",", &save)) {
            failure *f = &cfg.fails[cfg.n_fails];
            char *eq = strchr(item, '='), *at;
            if (!eq)
                continue;
            *eq = 0;
            snprintf(f->call, sizeof f->call, "%s", item);
            at = strchr(eq + 1, '@');
            f->from = at ? atol(at + 1) : 0; /* 0: every call */
            f->onward = at && strchr(at, '+');
            if (at)
                *at = 0;
            f->hang = !strcmp(eq + 1, "hang");
            f->code = f->hang ? 0 : atoi(eq + 1);
            f->count = 0;
            cfg.n_fails++;
        }
    }
}

static void read_conf(const char *path)
{
    char line[1200];
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        char *eq = strchr(line, '=');
        if (line[0] == '#' || !eq)
            continue;
        line[strcspn(line, "\r\n")] = 0;
        *eq = 0;
        set_key(line, eq + 1);
    }
    fclose(f);
}

static size_t read_file(const char *path, char *buf, size_t size)
{
    FILE *f = fopen(path, "rb");
    size_t n;
    if (!f)
        return 0;
    n = fread(buf, 1, size - 1, f);
    buf[n] = 0;
    fclose(f);
    return n;
}

/* "rockchip,rk3568-evb1\0rockchip,rk3568\0" -> "rk3568" */
static void read_soc(void)
{
    char buf[4096];
    size_t n = read_file("/proc/device-tree/compatible", buf, sizeof buf);
    for (size_t i = 0; i < n; i += strlen(buf + i) + 1) {
        const char *s = buf + i;
        size_t len = strlen(s);
        /* the chip, also of a lettered variant: rk3588s and rk3588f are RK3588s */
        if (!strncmp(s, "rockchip,rk", 11) && (len == 15 || (len == 16 && s[15] >= 'a' && s[15] <= 'z')))
            snprintf(cfg.soc, sizeof cfg.soc, "%.6s", s + 9);
    }
    cfg.cores = !strcmp(cfg.soc, "rk3588") ? 3 : !strcmp(cfg.soc, "rk3576") ? 2 : 1;
}

/* "RKNPU driver: v0.8.2" -> "0.8.2" */
static void read_driver(void)
{
    static const char *paths[] = {"/sys/kernel/debug/rknpu/version", "/proc/rknpu/version"};
    char buf[256];
    snprintf(cfg.driver, sizeof cfg.driver, "unknown");
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++) {
        if (!read_file(paths[i], buf, sizeof buf))
            continue;
        char *v = strstr(buf, ": v");
        if (v) {
            v[3 + strcspn(v + 3, " \r\n")] = 0;
            snprintf(cfg.driver, sizeof cfg.driver, "%s", v + 3);
            return;
        }
    }
}

static void setup(void)
{
    static const char *keys[] = {"RKNN_STANDIN_DIR", "RKNN_STANDIN_LOG", "RKNN_STANDIN_RUN_MS",
                                 "RKNN_STANDIN_FAIL"};
    snprintf(cfg.dir, sizeof cfg.dir, "/var/lib/rknn-standin");
    read_conf("/etc/rknn-standin.conf");
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        if (getenv(keys[i]))
            set_key(keys[i], getenv(keys[i]));
    read_soc();
    read_driver();
    trace("loaded: librknnrt %s, soc %s (%d core%s), driver %s, records in %s", STANDIN_VERSION,
          cfg.soc[0] ? cfg.soc : "unknown", cfg.cores, cfg.cores > 1 ? "s" : "", cfg.driver,
          cfg.dir);
}

/* A configured failure of `call`: 0 (none), else the code to return. The environment
 * variable is read at every call, so a test can change it between calls (counts restart). */
static int injected(const char *call)
{
    static char seen[1024];
    const char *now = getenv("RKNN_STANDIN_FAIL");
    int code = 0;
    pthread_mutex_lock(&lock);
    if (now && strcmp(now, seen)) {
        snprintf(seen, sizeof seen, "%s", now);
        set_key("RKNN_STANDIN_FAIL", now);
    } else if (!now && seen[0]) {
        seen[0] = 0;
        cfg.n_fails = 0;
    }
    for (int i = 0; i < cfg.n_fails; i++) {
        failure *f = &cfg.fails[i];
        if (strcmp(f->call, call))
            continue;
        f->count++;
        if (f->count < f->from || (!f->onward && f->from > 0 && f->count != f->from))
            continue;
        if (f->hang) {
            pthread_mutex_unlock(&lock);
            trace("%s: call %ld hangs (RKNN_STANDIN_FAIL)", call, f->count);
            for (;;)
                sleep(3600);
        }
        code = f->code;
    }
    pthread_mutex_unlock(&lock);
    if (code)
        trace("%s: failing with %d (RKNN_STANDIN_FAIL)", call, code);
    return code;
}

#define ENTER(call)                      \
    pthread_once(&once, setup);          \
    do {                                 \
        int forced_ = injected(call);    \
        if (forced_)                     \
            return forced_;              \
    } while (0)

/* ---------------------------------------------------------------- versions */

static int version_at_most(const char *version, int major, int minor, int patch)
{
    int a = 0, b = 0, c = 0;
    sscanf(version, "%d.%d.%d", &a, &b, &c);
    return a != major ? a < major : b != minor ? b < minor : c <= patch;
}

static const char *family(const char *soc)
{
    if (!strcmp(soc, "rk3566") || !strcmp(soc, "rk3568") || !strcmp(soc, "rk356x"))
        return "rk356x";
    return soc;
}

/* ---------------------------------------------------------------- models */

static const struct {
    const char *name;
    int value;
} NAMES[] = {
    {"NCHW", RKNN_TENSOR_NCHW},   {"NHWC", RKNN_TENSOR_NHWC},     {"UNDEFINED", RKNN_TENSOR_UNDEFINED},
    {"FP32", RKNN_TENSOR_FLOAT32}, {"FP16", RKNN_TENSOR_FLOAT16}, {"INT8", RKNN_TENSOR_INT8},
    {"UINT8", RKNN_TENSOR_UINT8}, {"INT16", RKNN_TENSOR_INT16},   {"INT32", RKNN_TENSOR_INT32},
    {"INT64", RKNN_TENSOR_INT64}, {"NONE", RKNN_TENSOR_QNT_NONE}, {"AFFINE", RKNN_TENSOR_QNT_AFFINE_ASYMMETRIC},
};

static int named(const char *name)
{
    for (size_t i = 0; i < sizeof NAMES / sizeof *NAMES; i++)
        if (!strcmp(NAMES[i].name, name))
            return NAMES[i].value;
    return -1;
}

static size_t type_size(int type)
{
    switch (type) {
    case RKNN_TENSOR_FLOAT32: case RKNN_TENSOR_INT32: case RKNN_TENSOR_UINT32: return 4;
    case RKNN_TENSOR_FLOAT16: case RKNN_TENSOR_INT16: case RKNN_TENSOR_UINT16: return 2;
    case RKNN_TENSOR_INT64: return 8;
    default: return 1;
    }
}

static uint32_t elems(const tensor *t)
{
    uint32_t n = 1;
    for (uint32_t i = 0; i < t->n_dims; i++)
        n *= t->dims[i];
    return n;
}

/* One sidecar line: "input|output <TAB> name <TAB> fmt <TAB> type <TAB> qnt <TAB> zp <TAB>
 * scale <TAB> d0,d1,..." */
static int parse_tensor(char *line, tensor *t)
{
    char *field[8], *save = NULL, *dims, *d;
    int n = 0;
    for (char *p = strtok_r(line, "\t", &save); p && n < 8; p = strtok_r(NULL, "\t", &save))
        field[n++] = p;
    if (n != 8)
        return -1;
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", field[1]);
    t->fmt = named(field[2]);
    t->type = named(field[3]);
    t->qnt = named(field[4]);
    t->zp = atoi(field[5]);
    t->scale = strtof(field[6], NULL);
    dims = field[7];
    for (d = strtok_r(dims, ",", &save); d && t->n_dims < RKNN_MAX_DIMS; d = strtok_r(NULL, ",", &save))
        t->dims[t->n_dims++] = (uint32_t)atol(d);
    return t->fmt < 0 || t->type < 0 || t->qnt < 0 ? -1 : 0;
}

/* Reads <dir>/<sha>.model: platforms, toolkit version and the tensors; 0 or an error code. */
static int load_sidecar(context *c)
{
    char path[700], line[1024], platforms[256] = "", toolkit[64] = "";
    snprintf(path, sizeof path, "%s/%s.model", cfg.dir, c->sha);
    FILE *f = fopen(path, "r");
    if (!f) {
        rt_log('E', "rknn-standin: no attributes for this model: %s is missing (the test writes it "
                    "from rkserve's .rknn reader)", path);
        return RKNN_ERR_MODEL_INVALID;
    }
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!strncmp(line, "platform\t", 9))
            snprintf(platforms, sizeof platforms, "%s", line + 9);
        else if (!strncmp(line, "toolkit\t", 8))
            snprintf(toolkit, sizeof toolkit, "%s", line + 8);
        else if (!strncmp(line, "input\t", 6) && c->n_in < MAX_IO)
            parse_tensor(line, &c->in[c->n_in++]);
        else if (!strncmp(line, "output\t", 7) && c->n_out < MAX_IO)
            parse_tensor(line, &c->out[c->n_out++]);
    }
    fclose(f);
    trace("model %s: %u inputs, %u outputs, platform %s, toolkit %s", c->sha, c->n_in, c->n_out,
          platforms, toolkit);
    if (version_at_most(STANDIN_VERSION, 1, 5, 0) && toolkit[0] && !version_at_most(toolkit, 1, 5, 1)) {
        rt_log('E', "6, 4");
        rt_log('E', "Invalid RKNN model version 6");
        rt_log('E', "rknn_init, load model failed!");
        return RKNN_ERR_MODEL_INVALID;
    }
    char *save = NULL, *match = NULL;
    for (char *p = strtok_r(platforms, ",", &save); p; p = strtok_r(NULL, ",", &save))
        if (!strcmp(family(p), family(cfg.soc)))
            match = p;
    if (!match) {
        rt_log('E', "The rknn model does not match the RKNPU hardware version!");
        rt_log('E', "rknn_init, load model failed!");
        return RKNN_ERR_FAIL;
    }
    return RKNN_SUCC;
}

static int read_model(void *model, uint32_t size, sha256_ctx *hash)
{
    char magic[4] = {0};
    sha256_init(hash);
    if (size > 0) {
        memcpy(magic, model, size < 4 ? size : 4);
        sha256_update(hash, model, size);
    } else {
        char buf[65536];
        size_t n, total = 0;
        FILE *f = fopen((const char *)model, "rb");
        if (!f) {
            rt_log('E', "rknn_init, open model file %s failed: %s", (const char *)model, strerror(errno));
            return RKNN_ERR_MODEL_INVALID;
        }
        while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
            if (total == 0)
                memcpy(magic, buf, n < 4 ? n : 4);
            sha256_update(hash, buf, n);
            total += n;
        }
        fclose(f);
    }
    if (memcmp(magic, "RKNN", 4)) {
        rt_log('E', "parseRKNN: invalid RKNN_MAGIC!");
        rt_log('E', "rknn_init, load model failed!");
        return RKNN_ERR_MODEL_INVALID;
    }
    return RKNN_SUCC;
}

/* ---------------------------------------------------------------- contexts */

static context *get(rknn_context handle)
{
    context *c = NULL;
    pthread_mutex_lock(&lock);
    if (handle >= 1 && handle <= MAX_CONTEXTS)
        c = contexts[handle - 1];
    pthread_mutex_unlock(&lock);
    if (!c)
        rt_log('E', "rknn context is invalid: %llu", (unsigned long long)handle);
    return c;
}

static rknn_context add(context *c)
{
    rknn_context handle = 0;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX_CONTEXTS && !handle; i++)
        if (!contexts[i]) {
            contexts[i] = c;
            handle = (rknn_context)(i + 1);
        }
    pthread_mutex_unlock(&lock);
    return handle;
}

static void drop_io(context *c)
{
    for (int i = 0; i < MAX_IO; i++) {
        free(c->input[i]);
        c->input[i] = NULL;
    }
    free(c->result);
    c->result = NULL;
    c->have_result = 0;
}

static int device_present(void)
{
    struct stat st;
    return stat("/dev/dri/renderD129", &st) == 0 || stat("/dev/rknpu", &st) == 0;
}

EXPORT int rknn_init(rknn_context *handle, void *model, uint32_t size, uint32_t flag,
                     rknn_init_extend *extend)
{
    ENTER("rknn_init");
    sha256_ctx hash;
    int ret;
    trace("rknn_init(size=%u, flag=0x%x, extend=%s)", size, flag, extend ? "set" : "NULL");
    if (!handle || !model)
        return RKNN_ERR_PARAM_INVALID;
    rt_log('I', "RKNN Runtime Information, %s", VERSION_LINE);
    if (!device_present()) {
        rt_log('E', "failed to open rknpu module, need to insmod rknpu dirver!");
        return RKNN_ERR_FAIL;
    }
    rt_log('I', "RKNN Driver Information, version: %s", cfg.driver);
    context *c = calloc(1, sizeof *c);
    if (!c)
        return RKNN_ERR_MALLOC_FAIL;
    ret = read_model(model, size, &hash);
    if (ret == RKNN_SUCC) {
        sha256_hex(&hash, c->sha);
        ret = load_sidecar(c);
    }
    if (ret == RKNN_SUCC && !(*handle = add(c)))
        ret = RKNN_ERR_MALLOC_FAIL;
    if (ret != RKNN_SUCC) {
        free(c);
        trace("rknn_init -> %d", ret);
        return ret;
    }
    if (extend)
        extend->ctx = *handle;
    trace("rknn_init -> 0, ctx %llu, model %s", (unsigned long long)*handle, c->sha);
    return RKNN_SUCC;
}

EXPORT int rknn_dup_context(rknn_context *in, rknn_context *out)
{
    ENTER("rknn_dup_context");
    context *c = in ? get(*in) : NULL, *d;
    if (!c || !out)
        return RKNN_ERR_CTX_INVALID;
    if (!(d = calloc(1, sizeof *d)))
        return RKNN_ERR_MALLOC_FAIL;
    memcpy(d->sha, c->sha, sizeof d->sha);
    d->n_in = c->n_in;
    d->n_out = c->n_out;
    memcpy(d->in, c->in, sizeof d->in);
    memcpy(d->out, c->out, sizeof d->out);
    if (!(*out = add(d))) {
        free(d);
        return RKNN_ERR_MALLOC_FAIL;
    }
    trace("rknn_dup_context(%llu) -> %llu", (unsigned long long)*in, (unsigned long long)*out);
    return RKNN_SUCC;
}

EXPORT int rknn_destroy(rknn_context handle)
{
    ENTER("rknn_destroy");
    context *c = get(handle);
    trace("rknn_destroy(%llu)", (unsigned long long)handle);
    if (!c)
        return RKNN_ERR_CTX_INVALID;
    pthread_mutex_lock(&lock);
    contexts[handle - 1] = NULL;
    pthread_mutex_unlock(&lock);
    drop_io(c);
    free(c);
    return RKNN_SUCC;
}

/* ---------------------------------------------------------------- query */

static int fill_attr(context *c, int output, void *info, uint32_t size)
{
    rknn_tensor_attr *attr = info;
    if (size < sizeof *attr) {
        rt_log('E', "rknn_query, info_len(%u) < sizeof(rknn_tensor_attr)(%zu)!", size, sizeof *attr);
        return RKNN_ERR_PARAM_INVALID;
    }
    uint32_t count = output ? c->n_out : c->n_in;
    if (attr->index >= count) {
        rt_log('E', "rknn_query, %s index %u out of range (%u)", output ? "output" : "input",
               attr->index, count);
        return RKNN_ERR_PARAM_INVALID;
    }
    const tensor *t = output ? &c->out[attr->index] : &c->in[attr->index];
    uint32_t index = attr->index;
    memset(attr, 0, sizeof *attr);
    attr->index = index;
    attr->n_dims = t->n_dims;
    memcpy(attr->dims, t->dims, sizeof t->dims);
    snprintf(attr->name, sizeof attr->name, "%s", t->name);
    attr->n_elems = elems(t);
    attr->size = (uint32_t)(attr->n_elems * type_size(t->type));
    attr->fmt = t->fmt;
    attr->type = t->type;
    attr->qnt_type = t->qnt;
    attr->zp = t->zp;
    attr->scale = t->scale;
    attr->size_with_stride = attr->size;
    return RKNN_SUCC;
}

EXPORT int rknn_query(rknn_context handle, rknn_query_cmd cmd, void *info, uint32_t size)
{
    ENTER("rknn_query");
    context *c = get(handle);
    trace("rknn_query(%llu, cmd=%d, size=%u)", (unsigned long long)handle, cmd, size);
    if (!c)
        return RKNN_ERR_CTX_INVALID;
    if (!info)
        return RKNN_ERR_PARAM_INVALID;
    switch (cmd) {
    case RKNN_QUERY_IN_OUT_NUM: {
        rknn_input_output_num *num = info;
        if (size < sizeof *num)
            return RKNN_ERR_PARAM_INVALID;
        num->n_input = c->n_in;
        num->n_output = c->n_out;
        return RKNN_SUCC;
    }
    case RKNN_QUERY_INPUT_ATTR: case RKNN_QUERY_NATIVE_INPUT_ATTR:
    case RKNN_QUERY_NATIVE_NHWC_INPUT_ATTR: case RKNN_QUERY_CURRENT_INPUT_ATTR:
    case RKNN_QUERY_CURRENT_NATIVE_INPUT_ATTR:
        return fill_attr(c, 0, info, size);
    case RKNN_QUERY_OUTPUT_ATTR: case RKNN_QUERY_NATIVE_OUTPUT_ATTR:
    case RKNN_QUERY_NATIVE_NHWC_OUTPUT_ATTR: case RKNN_QUERY_CURRENT_OUTPUT_ATTR:
    case RKNN_QUERY_CURRENT_NATIVE_OUTPUT_ATTR:
        return fill_attr(c, 1, info, size);
    case RKNN_QUERY_SDK_VERSION: {
        rknn_sdk_version *v = info;
        if (size < sizeof *v)
            return RKNN_ERR_PARAM_INVALID;
        snprintf(v->api_version, sizeof v->api_version, "%s (%s)", STANDIN_VERSION, STANDIN_BUILD);
        snprintf(v->drv_version, sizeof v->drv_version, "%s", cfg.driver);
        return RKNN_SUCC;
    }
    case RKNN_QUERY_PERF_RUN: {
        rknn_perf_run *p = info;
        if (size < sizeof *p)
            return RKNN_ERR_PARAM_INVALID;
        p->run_duration = c->last_run_us;
        return RKNN_SUCC;
    }
    case RKNN_QUERY_MEM_SIZE:
        memset(info, 0, size < sizeof(rknn_mem_size) ? size : sizeof(rknn_mem_size));
        return RKNN_SUCC;
    case RKNN_QUERY_CUSTOM_STRING:
        memset(info, 0, size < sizeof(rknn_custom_string) ? size : sizeof(rknn_custom_string));
        return RKNN_SUCC;
    case RKNN_QUERY_INPUT_DYNAMIC_RANGE:
        /* A static-shape model has no ranges. */
        if (size >= sizeof(rknn_input_range))
            ((rknn_input_range *)info)->shape_number = 0;
        return RKNN_SUCC;
    default:
        rt_log('E', "rknn_query, cmd %d is not supported by the stand-in", cmd);
        return RKNN_ERR_PARAM_INVALID;
    }
}

/* ---------------------------------------------------------------- inference */

/* NCHW bytes of a 4-D tensor whose model layout is NHWC, transposed as the runtime does. */
static void nchw_to_nhwc(const uint8_t *src, uint8_t *dst, const tensor *t, size_t unit)
{
    uint32_t h = t->dims[1], w = t->dims[2], ch = t->dims[3];
    for (uint32_t n = 0; n < t->dims[0]; n++)
        for (uint32_t k = 0; k < ch; k++)
            for (uint32_t y = 0; y < h; y++)
                for (uint32_t x = 0; x < w; x++)
                    memcpy(dst + (((size_t)n * h + y) * w + x) * ch * unit + k * unit,
                           src + (((size_t)n * ch + k) * h + y) * w * unit + x * unit, unit);
}

EXPORT int rknn_inputs_set(rknn_context handle, uint32_t n_inputs, rknn_input inputs[])
{
    ENTER("rknn_inputs_set");
    context *c = get(handle);
    if (!c)
        return RKNN_ERR_CTX_INVALID;
    if (n_inputs != c->n_in || !inputs) {
        rt_log('E', "rknn_inputs_set, n_inputs %u != model inputs %u", n_inputs, c->n_in);
        return RKNN_ERR_PARAM_INVALID;
    }
    for (uint32_t i = 0; i < n_inputs; i++) {
        rknn_input *in = &inputs[i];
        trace("rknn_inputs_set(%llu, input %u: size=%u, type=%d, fmt=%d, pass_through=%u)",
              (unsigned long long)handle, in->index, in->size, in->type, in->fmt, in->pass_through);
        if (in->index >= c->n_in || !in->buf)
            return RKNN_ERR_PARAM_INVALID;
        const tensor *t = &c->in[in->index];
        size_t unit = in->pass_through ? type_size(t->type) : type_size(in->type);
        size_t want = elems(t) * unit;
        if (in->size != want) {
            rt_log('E', "rknn_inputs_set, input[%u] size %u != %zu (%u elements of %zu bytes)",
                   in->index, in->size, want, elems(t), unit);
            return RKNN_ERR_PARAM_INVALID;
        }
        uint8_t *copy = malloc(want);
        if (!copy)
            return RKNN_ERR_MALLOC_FAIL;
        if (!in->pass_through && in->fmt == RKNN_TENSOR_NCHW && t->fmt == RKNN_TENSOR_NHWC && t->n_dims == 4)
            nchw_to_nhwc(in->buf, copy, t, unit);
        else
            memcpy(copy, in->buf, want);
        free(c->input[in->index]);
        c->input[in->index] = copy;
        c->input_size[in->index] = want;
        c->input_type[in->index] = in->pass_through ? -1 : in->type;
    }
    return RKNN_SUCC;
}

EXPORT int rknn_set_batch_core_num(rknn_context handle, int core_num)
{
    ENTER("rknn_set_batch_core_num");
    trace("rknn_set_batch_core_num(%llu, %d)", (unsigned long long)handle, core_num);
    return get(handle) ? RKNN_SUCC : RKNN_ERR_CTX_INVALID;
}

EXPORT int rknn_set_core_mask(rknn_context handle, rknn_core_mask mask)
{
    ENTER("rknn_set_core_mask");
    context *c = get(handle);
    trace("rknn_set_core_mask(%llu, 0x%x) on %s", (unsigned long long)handle, mask, cfg.soc);
    if (!c)
        return RKNN_ERR_CTX_INVALID;
    if (cfg.cores == 1) {
        rt_log('E', "rknn_set_core_mask: the NPU of %s has one core, core mask is not supported!",
               cfg.soc);
        return RKNN_ERR_TARGET_PLATFORM_UNMATCH;
    }
    int all = (1 << cfg.cores) - 1;
    if (mask != RKNN_NPU_CORE_AUTO && mask != RKNN_NPU_CORE_ALL && (mask & ~all)) {
        rt_log('E', "rknn_set_core_mask: invalid core mask 0x%x for %d cores", mask, cfg.cores);
        return RKNN_ERR_PARAM_INVALID;
    }
    c->core_mask = mask;
    return RKNN_SUCC;
}

/* The core an inference runs on: the lowest core of the mask, or round robin for AUTO/ALL. */
static int pick_core(const context *c)
{
    if (c->core_mask != RKNN_NPU_CORE_AUTO && c->core_mask != RKNN_NPU_CORE_ALL)
        return __builtin_ctz((unsigned)c->core_mask);
    pthread_mutex_lock(&lock);
    int core = (int)(next_core++ % (unsigned)cfg.cores);
    pthread_mutex_unlock(&lock);
    return core;
}

static size_t outputs_bytes(const context *c)
{
    size_t total = 0;
    for (uint32_t i = 0; i < c->n_out; i++)
        total += elems(&c->out[i]) * sizeof(float);
    return total;
}

/* The record for the inputs now set: 0, STANDIN_ERR_NO_RECORD or another error. */
static int replay(context *c, char key[65])
{
    sha256_ctx hash;
    char path[800];
    sha256_init(&hash);
    for (uint32_t i = 0; i < c->n_in; i++) {
        if (!c->input[i]) {
            rt_log('E', "rknn_run, input[%u] is not set", i);
            return RKNN_ERR_INPUT_INVALID;
        }
        if (c->input_type[i] != RKNN_TENSOR_UINT8) /* records are of uint8 pixels */
            sha256_update(&hash, &c->input_type[i], sizeof c->input_type[i]);
        sha256_update(&hash, c->input[i], c->input_size[i]);
    }
    sha256_hex(&hash, key);
    snprintf(path, sizeof path, "%s/%s/%s.out", cfg.dir, c->sha, key);
    size_t want = outputs_bytes(c);
    FILE *f = fopen(path, "rb");
    if (!f) {
        rt_log('E', "rknn-standin: NO RECORD for input sha256 %s of model %s: the bytes the "
                    "runtime received differ from every recorded input (layout, dtype, colour "
                    "order or resize changed?)", key, c->sha);
        return STANDIN_ERR_NO_RECORD;
    }
    free(c->result);
    c->result = malloc(want);
    size_t got = c->result ? fread(c->result, 1, want, f) : 0;
    int extra = fgetc(f) != EOF;
    fclose(f);
    if (got != want || extra) {
        rt_log('E', "rknn-standin: record %s has the wrong size (want %zu bytes)", path, want);
        return RKNN_ERR_OUTPUT_INVALID;
    }
    return RKNN_SUCC;
}

EXPORT int rknn_run(rknn_context handle, rknn_run_extend *extend)
{
    pthread_once(&once, setup);
    context *c = get(handle);
    char key[65];
    struct timespec t0, t1;
    if (!c)
        return RKNN_ERR_CTX_INVALID;
    c->have_result = 0; /* a failed run leaves nothing for rknn_outputs_get to return */
    int forced = injected("rknn_run");
    if (forced)
        return forced;
    if (__atomic_exchange_n(&c->busy, 1, __ATOMIC_ACQUIRE)) {
        rt_log('E', "failed to submit!, op id: 0, op name: (the context is running on another thread)");
        return RKNN_ERR_FAIL;
    }
    clock_gettime(CLOCK_MONOTONIC, &t0);
    c->have_result = 0;
    int ret = replay(c, key), core = pick_core(c);
    if (cfg.run_ms > 0)
        usleep((useconds_t)(cfg.run_ms * 1000));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    c->last_run_us = (t1.tv_sec - t0.tv_sec) * 1000000 + (t1.tv_nsec - t0.tv_nsec) / 1000;
    c->have_result = ret == RKNN_SUCC;
    if (extend)
        extend->frame_id = 0;
    trace("rknn_run(%llu) core=%d ms=%.1f-%.1f input=%s -> %d", (unsigned long long)handle, core,
          t0.tv_sec * 1e3 + t0.tv_nsec / 1e6, t1.tv_sec * 1e3 + t1.tv_nsec / 1e6, key, ret);
    __atomic_store_n(&c->busy, 0, __ATOMIC_RELEASE);
    return ret;
}

EXPORT int rknn_wait(rknn_context handle, rknn_run_extend *extend)
{
    ENTER("rknn_wait");
    (void)extend;
    trace("rknn_wait(%llu)", (unsigned long long)handle);
    return get(handle) ? RKNN_SUCC : RKNN_ERR_CTX_INVALID;
}

static uint16_t to_half(float value)
{
    uint32_t x;
    memcpy(&x, &value, 4);
    uint32_t sign = (x >> 16) & 0x8000, mant = x & 0x7fffff;
    int exp = (int)((x >> 23) & 0xff) - 127 + 15;
    if (exp >= 31)
        return (uint16_t)(sign | 0x7c00 | (((x >> 23) & 0xff) == 0xff && mant ? 0x200 : 0));
    if (exp <= 0)
        return (uint16_t)sign; /* flush tiny values to zero: the NPU's outputs never are */
    uint32_t half = sign | (uint32_t)exp << 10 | mant >> 13;
    if ((mant & 0x1fff) > 0x1000 || ((mant & 0x1fff) == 0x1000 && (half & 1)))
        half++;
    return (uint16_t)half;
}

/* A float output as the model's own type (want_float = 0). */
static void to_native(const float *src, uint8_t *dst, const tensor *t, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float q = t->qnt == RKNN_TENSOR_QNT_AFFINE_ASYMMETRIC ? src[i] / t->scale + t->zp : src[i];
        switch (t->type) {
        case RKNN_TENSOR_FLOAT16: ((uint16_t *)dst)[i] = to_half(src[i]); break;
        case RKNN_TENSOR_INT8: ((int8_t *)dst)[i] = (int8_t)fmaxf(-128, fminf(127, roundf(q))); break;
        case RKNN_TENSOR_UINT8: ((uint8_t *)dst)[i] = (uint8_t)fmaxf(0, fminf(255, roundf(q))); break;
        default: ((float *)dst)[i] = src[i]; break;
        }
    }
}

EXPORT int rknn_outputs_get(rknn_context handle, uint32_t n_outputs, rknn_output outputs[],
                            rknn_output_extend *extend)
{
    ENTER("rknn_outputs_get");
    context *c = get(handle);
    if (!c)
        return RKNN_ERR_CTX_INVALID;
    if (!c->have_result) {
        rt_log('E', "rknn_outputs_get, no finished run to get outputs of");
        return RKNN_ERR_FAIL;
    }
    if (n_outputs > c->n_out || !outputs)
        return RKNN_ERR_PARAM_INVALID;
    for (uint32_t i = 0; i < n_outputs; i++) {
        rknn_output *o = &outputs[i];
        if (o->index >= c->n_out)
            return RKNN_ERR_PARAM_INVALID;
        const tensor *t = &c->out[o->index];
        size_t offset = 0, n = elems(t);
        for (uint32_t k = 0; k < o->index; k++)
            offset += elems(&c->out[k]);
        size_t bytes = n * (o->want_float ? sizeof(float) : type_size(t->type));
        trace("rknn_outputs_get(%llu, output %u: want_float=%u, is_prealloc=%u, size=%u) -> %zu bytes",
              (unsigned long long)handle, o->index, o->want_float, o->is_prealloc, o->size, bytes);
        if (o->is_prealloc) {
            if (!o->buf || o->size < bytes) {
                rt_log('E', "rknn_outputs_get, output[%u] buffer of %u bytes < %zu", o->index, o->size, bytes);
                return RKNN_ERR_PARAM_INVALID;
            }
        } else if (!(o->buf = malloc(bytes))) {
            return RKNN_ERR_MALLOC_FAIL;
        }
        o->size = (uint32_t)bytes;
        if (o->want_float)
            memcpy(o->buf, c->result + offset, bytes);
        else
            to_native(c->result + offset, o->buf, t, n);
    }
    if (extend)
        extend->frame_id = 0;
    return RKNN_SUCC;
}

EXPORT int rknn_outputs_release(rknn_context handle, uint32_t n_outputs, rknn_output outputs[])
{
    ENTER("rknn_outputs_release");
    trace("rknn_outputs_release(%llu, %u)", (unsigned long long)handle, n_outputs);
    if (!get(handle))
        return RKNN_ERR_CTX_INVALID;
    for (uint32_t i = 0; outputs && i < n_outputs; i++)
        if (!outputs[i].is_prealloc) {
            free(outputs[i].buf);
            outputs[i].buf = NULL;
        }
    return RKNN_SUCC;
}

/* ---------------------------------------------------------------- not emulated */

static int unsupported(const char *call)
{
    rt_log('E', "rknn-standin: %s is not emulated", call);
    return RKNN_ERR_FAIL;
}

static int same_shape(const tensor *t, const rknn_tensor_attr *a)
{
    uint32_t dims[RKNN_MAX_DIMS];
    memcpy(dims, a->dims, sizeof dims);
    if (a->n_dims == 4 && a->fmt == RKNN_TENSOR_NCHW && t->fmt == RKNN_TENSOR_NHWC) {
        dims[1] = a->dims[2]; /* NCHW -> NHWC */
        dims[2] = a->dims[3];
        dims[3] = a->dims[1];
    }
    return a->n_dims == t->n_dims && !memcmp(dims, t->dims, t->n_dims * sizeof *dims);
}

/* A static-shape model (all the stand-in emulates) accepts its own shapes only. */
EXPORT int rknn_set_input_shapes(rknn_context handle, uint32_t n_inputs, rknn_tensor_attr attr[])
{
    ENTER("rknn_set_input_shapes");
    context *c = get(handle);
    if (!c)
        return RKNN_ERR_CTX_INVALID;
    if (n_inputs != c->n_in || !attr)
        return RKNN_ERR_PARAM_INVALID;
    for (uint32_t i = 0; i < n_inputs; i++) {
        const rknn_tensor_attr *a = &attr[i];
        trace("rknn_set_input_shapes(%llu, input %u: n_dims=%u dims=%u,%u,%u,%u fmt=%d type=%d)",
              (unsigned long long)handle, a->index, a->n_dims, a->dims[0], a->dims[1], a->dims[2],
              a->dims[3], a->fmt, a->type);
        if (a->index >= c->n_in || !same_shape(&c->in[a->index], a)) {
            rt_log('E', "rknn_set_input_shapes, input[%u]: the shape differs from the model's "
                        "and the model has no dynamic shapes", a->index);
            return RKNN_ERR_PARAM_INVALID;
        }
    }
    return RKNN_SUCC;
}

EXPORT int rknn_set_input_shape(rknn_context handle, rknn_tensor_attr *attr)
{
    ENTER("rknn_set_input_shape");
    context *c = get(handle);
    if (!c)
        return RKNN_ERR_CTX_INVALID;
    if (!attr || attr->index >= c->n_in || !same_shape(&c->in[attr->index], attr))
        return RKNN_ERR_PARAM_INVALID;
    return RKNN_SUCC;
}

EXPORT rknn_tensor_mem *rknn_create_mem(rknn_context handle, uint32_t size)
{
    pthread_once(&once, setup);
    (void)handle; (void)size;
    unsupported("rknn_create_mem");
    return NULL;
}

EXPORT rknn_tensor_mem *rknn_create_mem2(rknn_context handle, uint64_t size, uint64_t flags)
{
    pthread_once(&once, setup);
    (void)handle; (void)size; (void)flags;
    unsupported("rknn_create_mem2");
    return NULL;
}

EXPORT rknn_tensor_mem *rknn_create_mem_from_fd(rknn_context handle, int32_t fd, void *virt,
                                                uint32_t size, int32_t offset)
{
    pthread_once(&once, setup);
    (void)handle; (void)fd; (void)virt; (void)size; (void)offset;
    unsupported("rknn_create_mem_from_fd");
    return NULL;
}

EXPORT rknn_tensor_mem *rknn_create_mem_from_phys(rknn_context handle, uint64_t phys, void *virt,
                                                  uint32_t size)
{
    pthread_once(&once, setup);
    (void)handle; (void)phys; (void)virt; (void)size;
    unsupported("rknn_create_mem_from_phys");
    return NULL;
}

EXPORT rknn_tensor_mem *rknn_create_mem_from_mb_blk(rknn_context handle, void *blk, int32_t offset)
{
    pthread_once(&once, setup);
    (void)handle; (void)blk; (void)offset;
    unsupported("rknn_create_mem_from_mb_blk");
    return NULL;
}

EXPORT int rknn_destroy_mem(rknn_context handle, rknn_tensor_mem *mem)
{
    ENTER("rknn_destroy_mem");
    (void)handle; (void)mem;
    return unsupported("rknn_destroy_mem");
}

EXPORT int rknn_set_weight_mem(rknn_context handle, rknn_tensor_mem *mem)
{
    ENTER("rknn_set_weight_mem");
    (void)handle; (void)mem;
    return unsupported("rknn_set_weight_mem");
}

EXPORT int rknn_set_internal_mem(rknn_context handle, rknn_tensor_mem *mem)
{
    ENTER("rknn_set_internal_mem");
    (void)handle; (void)mem;
    return unsupported("rknn_set_internal_mem");
}

EXPORT int rknn_set_io_mem(rknn_context handle, rknn_tensor_mem *mem, rknn_tensor_attr *attr)
{
    ENTER("rknn_set_io_mem");
    (void)handle; (void)mem; (void)attr;
    return unsupported("rknn_set_io_mem");
}

EXPORT int rknn_mem_sync(rknn_context handle, rknn_tensor_mem *mem, int mode)
{
    ENTER("rknn_mem_sync");
    (void)handle; (void)mem; (void)mode;
    return unsupported("rknn_mem_sync");
}
