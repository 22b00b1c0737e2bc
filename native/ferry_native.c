/*
 * ferry_native: the file operations Node lacks, for the raw image backend (src/block/raw-file.ts).
 *
 *   seekData(fd, offset)  -> Promise<number>   lseek(SEEK_DATA); -1 when ENXIO (no data past offset)
 *   seekHole(fd, offset)  -> Promise<number>   lseek(SEEK_HOLE); -1 when ENXIO (offset past EOF)
 *   fallocate(fd, mode, offset, length) -> Promise<undefined>
 *   copyRange(fdIn, offsetIn, fdOut, offsetOut, length) -> Promise<number>
 *                         copy_file_range until `length` bytes moved; resolves with the bytes moved
 *                         (fewer only where the source ends)
 *   cloneRange(fdIn, offsetIn, fdOut, offsetOut, length) -> Promise<undefined>
 *                         ioctl(FICLONERANGE): the target range shares the source's extents
 *   FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE
 *   preadNowait(fd, buffer, offset) -> number   synchronous; see below
 *
 * copyRange and cloneRange are the copier's offload (src/block/raw-file.ts, `copyRangeTo`,
 * `cloneRangeTo`): the data never crosses into JavaScript. Where the kernel or file system cannot,
 * they reject with its errno (EXDEV, EOPNOTSUPP, EINVAL, ENOSYS) and the caller falls back to
 * reading and writing.
 *
 * Every call but preadNowait runs on the libuv thread pool (napi_create_async_work), because
 * fallocate over a large range and lseek on a fragmented file or a slow NFS mount can take
 * milliseconds and the event loop serves every guest.
 *
 * preadNowait is the one synchronous call: preadv2(RWF_NOWAIT) copies from the page cache and
 * returns EAGAIN instead of waiting for the disk (or for a lock), so it never blocks the event loop
 * on I/O. It fills `buffer` from its start with up to buffer.length bytes and returns the count
 * (possibly short: only the cached prefix), or a negated errno: -EAGAIN when nothing was cached,
 * -EOPNOTSUPP/-ENOSYS where the file or kernel lacks RWF_NOWAIT. The caller then reads the rest on
 * the thread pool, which also reports real errors.
 *
 * A failure rejects with an Error shaped like Node's own fs errors (`code` is
 * the errno name, `errno` its negated value, `syscall`), so fromSystemError() maps both alike.
 *
 * Offsets arrive as JS numbers: anything but a non-negative safe integer is refused before the
 * call, since a rounded offset would touch the wrong bytes.
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/uio.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef __linux__
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#endif

#include <node_api.h>

/* Linux's values; defined here too so the constants exist (and fallocate fails) elsewhere. */
#ifndef FALLOC_FL_KEEP_SIZE
#define FALLOC_FL_KEEP_SIZE 0x01
#endif
#ifndef FALLOC_FL_PUNCH_HOLE
#define FALLOC_FL_PUNCH_HOLE 0x02
#endif
#ifndef FALLOC_FL_ZERO_RANGE
#define FALLOC_FL_ZERO_RANGE 0x10
#endif

/* 2^53 - 1: the largest integer a JS number holds exactly. */
#define SAFE_INTEGER_MAX 9007199254740991.0

typedef enum { OP_SEEK_DATA, OP_SEEK_HOLE, OP_FALLOCATE, OP_COPY_RANGE, OP_CLONE_RANGE } op_kind;

/* One call in flight: filled on the main thread, run on a pool thread, settled on the main thread. */
typedef struct {
  op_kind kind;
  int fd;
  int mode;
  int64_t offset;
  int64_t length;
  /* copyRange, cloneRange: the target file and where in it. */
  int fd_out;
  int64_t offset_out;
  /* lseek: the offset found, or -1 for ENXIO; copyRange: the bytes moved. */
  int64_t result;
  /* errno of the failed call; 0 on success. */
  int error;
  napi_deferred deferred;
  napi_async_work work;
} request;

static const char *syscall_name(op_kind kind) {
  switch (kind) {
    case OP_FALLOCATE: return "fallocate";
    case OP_COPY_RANGE: return "copy_file_range";
    case OP_CLONE_RANGE: return "ioctl(FICLONERANGE)";
    default: return "lseek";
  }
}

/* The errno names Node would give; the rest fall back to "Errno<n>" so nothing is lost. */
static const char *errno_name(int error) {
  switch (error) {
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EINTR: return "EINTR";
    case EIO: return "EIO";
    case ENXIO: return "ENXIO";
    case EBADF: return "EBADF";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case EACCES: return "EACCES";
    case EFAULT: return "EFAULT";
    case EBUSY: return "EBUSY";
    case ENODEV: return "ENODEV";
    case EISDIR: return "EISDIR";
    case EINVAL: return "EINVAL";
    case ETXTBSY: return "ETXTBSY";
    case EFBIG: return "EFBIG";
    case ENOSPC: return "ENOSPC";
    case ESPIPE: return "ESPIPE";
    case EROFS: return "EROFS";
    case ENOSYS: return "ENOSYS";
    case EXDEV: return "EXDEV";
    case ENOTTY: return "ENOTTY";
    case EOVERFLOW: return "EOVERFLOW";
    case EOPNOTSUPP: return "EOPNOTSUPP";
#if defined(ENOTSUP) && ENOTSUP != EOPNOTSUPP
    case ENOTSUP: return "ENOTSUP";
#endif
#ifdef EDQUOT
    case EDQUOT: return "EDQUOT";
#endif
#ifdef ESTALE
    case ESTALE: return "ESTALE";
#endif
    case ECANCELED: return "ECANCELED";
    default: return NULL;
  }
}

/* Builds `Error("EBADF: Bad file descriptor, lseek")` with code, errno and syscall, as Node does. */
static napi_value make_errno_error(napi_env env, int error, const char *syscall) {
  char fallback[32];
  const char *name = errno_name(error);
  if (name == NULL) {
    snprintf(fallback, sizeof fallback, "Errno%d", error);
    name = fallback;
  }
  char text[256];
  snprintf(text, sizeof text, "%s: %s, %s", name, strerror(error), syscall);

  napi_value code, message, result, errno_value, syscall_value;
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &message);
  napi_create_error(env, code, message, &result);
  napi_create_int32(env, -error, &errno_value);
  napi_set_named_property(env, result, "errno", errno_value);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &syscall_value);
  napi_set_named_property(env, result, "syscall", syscall_value);
  return result;
}

/* Pool thread: no napi calls here, only the system call and its outcome. */
static void execute(napi_env env, void *data) {
  (void)env;
  request *req = data;
  switch (req->kind) {
    case OP_SEEK_DATA:
    case OP_SEEK_HOLE: {
#if defined(SEEK_DATA) && defined(SEEK_HOLE)
      int whence = req->kind == OP_SEEK_DATA ? SEEK_DATA : SEEK_HOLE;
      off_t found = lseek(req->fd, (off_t)req->offset, whence);
      if (found >= 0) {
        req->result = (int64_t)found;
      } else if (errno == ENXIO) {
        req->result = -1;
      } else {
        req->error = errno;
      }
#else
      req->error = EOPNOTSUPP;
#endif
      break;
    }
    case OP_FALLOCATE: {
#ifdef __linux__
      int rc;
      do {
        rc = fallocate(req->fd, req->mode, (off_t)req->offset, (off_t)req->length);
      } while (rc != 0 && errno == EINTR);
      if (rc != 0) req->error = errno;
#else
      req->error = EOPNOTSUPP;
#endif
      break;
    }
    case OP_COPY_RANGE: {
#ifdef __linux__
      /* The kernel may move fewer bytes than asked (it caps one call near 2 GiB, and splices in
       * pieces): loop until done. 0 means the source ended: report what was moved. */
      loff_t in = (loff_t)req->offset, out = (loff_t)req->offset_out;
      int64_t moved = 0;
      while (moved < req->length) {
        ssize_t rc = copy_file_range(req->fd, &in, req->fd_out, &out,
                                     (size_t)(req->length - moved), 0);
        if (rc < 0) {
          if (errno == EINTR) continue;
          req->error = errno;
          break;
        }
        if (rc == 0) break;
        moved += rc;
      }
      req->result = moved;
#else
      req->error = ENOSYS;
#endif
      break;
    }
    case OP_CLONE_RANGE: {
#if defined(__linux__) && defined(FICLONERANGE)
      struct file_clone_range range = {
          .src_fd = req->fd,
          .src_offset = (uint64_t)req->offset,
          .src_length = (uint64_t)req->length,
          .dest_offset = (uint64_t)req->offset_out,
      };
      int rc;
      do {
        rc = ioctl(req->fd_out, FICLONERANGE, &range);
      } while (rc != 0 && errno == EINTR);
      if (rc != 0) req->error = errno;
#else
      req->error = EOPNOTSUPP;
#endif
      break;
    }
  }
}

/* Main thread: settle the promise and free the request, whatever happens. */
static void complete(napi_env env, napi_status status, void *data) {
  request *req = data;
  if (status == napi_cancelled && req->error == 0) req->error = ECANCELED;
  napi_value value;
  if (req->error != 0) {
    value = make_errno_error(env, req->error, syscall_name(req->kind));
    napi_reject_deferred(env, req->deferred, value);
  } else {
    if (req->kind == OP_FALLOCATE || req->kind == OP_CLONE_RANGE) {
      napi_get_undefined(env, &value);
    } else {
      napi_create_int64(env, req->result, &value);
    }
    napi_resolve_deferred(env, req->deferred, value);
  }
  napi_delete_async_work(env, req->work);
  free(req);
}

static bool get_fd(napi_env env, napi_value value, int *fd) {
  napi_valuetype type;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_number) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "fd must be a number");
    return false;
  }
  double number;
  napi_get_value_double(env, value, &number);
  if (!(number >= 0 && number <= INT32_MAX && (double)(int32_t)number == number)) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "fd must be a non-negative 32-bit integer");
    return false;
  }
  *fd = (int)number;
  return true;
}

/* A byte offset, length or mode: a non-negative safe integer, at least `minimum`. */
static bool get_integer(napi_env env, napi_value value, const char *what, int64_t minimum,
                        int64_t *out) {
  napi_valuetype type;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_number) {
    char text[96];
    snprintf(text, sizeof text, "%s must be a number", what);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", text);
    return false;
  }
  double number;
  napi_get_value_double(env, value, &number);
  if (!(number >= (double)minimum && number <= SAFE_INTEGER_MAX &&
        (double)(int64_t)number == number)) {
    char text[128];
    snprintf(text, sizeof text, "%s must be a safe integer >= %lld, got %.17g", what,
             (long long)minimum, number);
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", text);
    return false;
  }
  napi_get_value_int64(env, value, out);
  return true;
}

/* Queues `req` (which it owns from here on) and returns its promise; NULL with an exception set. */
static napi_value queue(napi_env env, request *req, const char *resource) {
  napi_value promise, name;
  if (napi_create_promise(env, &req->deferred, &promise) != napi_ok) {
    free(req);
    return NULL;
  }
  napi_create_string_utf8(env, resource, NAPI_AUTO_LENGTH, &name);
  if (napi_create_async_work(env, NULL, name, execute, complete, req, &req->work) != napi_ok ||
      napi_queue_async_work(env, req->work) != napi_ok) {
    /* The promise was never handed out: reject it so its deferred is released, then throw. */
    napi_value error = make_errno_error(env, ENOMEM, resource);
    napi_reject_deferred(env, req->deferred, error);
    if (req->work != NULL) napi_delete_async_work(env, req->work);
    free(req);
    napi_throw_error(env, "ENOMEM", "could not queue native work");
    return NULL;
  }
  return promise;
}

/* Reads exactly `count` arguments into argv; throws ERR_MISSING_ARGS naming `usage` when fewer came. */
static bool get_args(napi_env env, napi_callback_info info, size_t count, napi_value *argv,
                     const char *usage) {
  size_t argc = count;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < count) {
    napi_throw_type_error(env, "ERR_MISSING_ARGS", usage);
    return false;
  }
  return true;
}

/* A zeroed request of `kind`, or NULL with ENOMEM thrown. */
static request *new_request(napi_env env, op_kind kind) {
  request *req = calloc(1, sizeof *req);
  if (req == NULL) {
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  req->kind = kind;
  return req;
}

static napi_value seek(napi_env env, napi_callback_info info, op_kind kind) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv, "expected (fd, offset)")) return NULL;
  int fd;
  int64_t offset;
  if (!get_fd(env, argv[0], &fd) || !get_integer(env, argv[1], "offset", 0, &offset)) return NULL;
  request *req = new_request(env, kind);
  if (req == NULL) return NULL;
  req->fd = fd;
  req->offset = offset;
  return queue(env, req, kind == OP_SEEK_DATA ? "ferry:seekData" : "ferry:seekHole");
}

static napi_value seek_data(napi_env env, napi_callback_info info) {
  return seek(env, info, OP_SEEK_DATA);
}

static napi_value seek_hole(napi_env env, napi_callback_info info) {
  return seek(env, info, OP_SEEK_HOLE);
}

static napi_value do_fallocate(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!get_args(env, info, 4, argv, "expected (fd, mode, offset, length)")) return NULL;
  int fd;
  int64_t mode, offset, length;
  if (!get_fd(env, argv[0], &fd) || !get_integer(env, argv[1], "mode", 0, &mode) ||
      !get_integer(env, argv[2], "offset", 0, &offset) ||
      !get_integer(env, argv[3], "length", 1, &length)) {
    return NULL;
  }
  if (mode > INT32_MAX) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "mode must be a 32-bit flag set");
    return NULL;
  }
  request *req = new_request(env, OP_FALLOCATE);
  if (req == NULL) return NULL;
  req->fd = fd;
  req->mode = (int)mode;
  req->offset = offset;
  req->length = length;
  return queue(env, req, "ferry:fallocate");
}

/* copyRange and cloneRange: (fdIn, offsetIn, fdOut, offsetOut, length). */
static napi_value transfer_range(napi_env env, napi_callback_info info, op_kind kind) {
  napi_value argv[5];
  if (!get_args(env, info, 5, argv, "expected (fdIn, offsetIn, fdOut, offsetOut, length)")) {
    return NULL;
  }
  int fd_in, fd_out;
  int64_t offset_in, offset_out, length;
  if (!get_fd(env, argv[0], &fd_in) || !get_integer(env, argv[1], "offsetIn", 0, &offset_in) ||
      !get_fd(env, argv[2], &fd_out) || !get_integer(env, argv[3], "offsetOut", 0, &offset_out) ||
      !get_integer(env, argv[4], "length", 1, &length)) {
    return NULL;
  }
  request *req = new_request(env, kind);
  if (req == NULL) return NULL;
  req->fd = fd_in;
  req->offset = offset_in;
  req->fd_out = fd_out;
  req->offset_out = offset_out;
  req->length = length;
  return queue(env, req, kind == OP_COPY_RANGE ? "ferry:copyRange" : "ferry:cloneRange");
}

static napi_value copy_range(napi_env env, napi_callback_info info) {
  return transfer_range(env, info, OP_COPY_RANGE);
}

static napi_value clone_range(napi_env env, napi_callback_info info) {
  return transfer_range(env, info, OP_CLONE_RANGE);
}

/* preadNowait(fd, buffer, offset): see the top of this file. Runs on the calling (main) thread. */
static napi_value pread_nowait(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv, "expected (fd, buffer, offset)")) return NULL;
  int fd;
  int64_t offset;
  void *data;
  size_t length;
  if (!get_fd(env, argv[0], &fd) || !get_integer(env, argv[2], "offset", 0, &offset)) return NULL;
  if (napi_get_buffer_info(env, argv[1], &data, &length) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "buffer must be a Buffer");
    return NULL;
  }
  ssize_t count;
#if defined(__linux__) && defined(RWF_NOWAIT)
  struct iovec vector = {data, length};
  do {
    count = preadv2(fd, &vector, 1, (off_t)offset, RWF_NOWAIT);
  } while (count < 0 && errno == EINTR);
  if (count < 0) count = -errno;
#else
  (void)fd;
  (void)offset;
  (void)data;
  count = -EOPNOTSUPP;
#endif
  napi_value value;
  napi_create_int64(env, (int64_t)count, &value);
  return value;
}

static napi_value int_value(napi_env env, int32_t number) {
  napi_value value;
  napi_create_int32(env, number, &value);
  return value;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor properties[] = {
      {"seekData", NULL, seek_data, NULL, NULL, NULL, napi_enumerable, NULL},
      {"seekHole", NULL, seek_hole, NULL, NULL, NULL, napi_enumerable, NULL},
      {"fallocate", NULL, do_fallocate, NULL, NULL, NULL, napi_enumerable, NULL},
      {"copyRange", NULL, copy_range, NULL, NULL, NULL, napi_enumerable, NULL},
      {"cloneRange", NULL, clone_range, NULL, NULL, NULL, napi_enumerable, NULL},
      {"preadNowait", NULL, pread_nowait, NULL, NULL, NULL, napi_enumerable, NULL},
      {"FALLOC_FL_KEEP_SIZE", NULL, NULL, NULL, NULL, int_value(env, FALLOC_FL_KEEP_SIZE),
       napi_enumerable, NULL},
      {"FALLOC_FL_PUNCH_HOLE", NULL, NULL, NULL, NULL, int_value(env, FALLOC_FL_PUNCH_HOLE),
       napi_enumerable, NULL},
      {"FALLOC_FL_ZERO_RANGE", NULL, NULL, NULL, NULL, int_value(env, FALLOC_FL_ZERO_RANGE),
       napi_enumerable, NULL},
  };
  if (napi_define_properties(env, exports, sizeof properties / sizeof properties[0], properties) !=
      napi_ok) {
    return NULL;
  }
  return exports;
}
