// bridge.cc: the native part of https-capture. A node-addon-api addon over libbpf that does
// only what needs native code: open, configure and load a BPF object; attach and detach
// probes; read and write its maps; and drain its ring buffer on a native thread, handing
// whole batches of records to JavaScript. Everything else (what to attach where, decoding
// records, connections, output) is TypeScript in helper/; helper/kernel/bridge.ts is the only
// importer of this addon.
#include <napi.h>

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <linux/types.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <linux/bpf.h>
#include <csignal>
#include <pthread.h>
#include <malloc.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdarg>
#include <cstring>
#include <ctime>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "capture.h"

namespace {

// ---- libbpf's own messages: kept so that an error can say what libbpf said -------------

std::mutex g_log_mutex;
std::string g_log;      // libbpf's messages since the last LogReset()
bool g_log_echo = false; // HTTPS_CAPTURE_LIBBPF_DEBUG=1 also prints them to stderr
constexpr size_t kLogKeep = 8192;

int LibbpfPrint(enum libbpf_print_level level, const char *fmt, va_list args) {
  char line[1024];
  vsnprintf(line, sizeof(line), fmt, args);
  if (g_log_echo) fputs(line, stderr);
  if (level == LIBBPF_DEBUG) return 0;
  std::lock_guard<std::mutex> lock(g_log_mutex);
  g_log += line;
  if (g_log.size() > 2 * kLogKeep) g_log.erase(0, g_log.size() - kLogKeep);
  return 0;
}

void LogReset() {
  std::lock_guard<std::mutex> lock(g_log_mutex);
  g_log.clear();
}

std::string LogTail() {
  std::lock_guard<std::mutex> lock(g_log_mutex);
  return g_log.size() > kLogKeep ? g_log.substr(g_log.size() - kLogKeep) : g_log;
}

// An Error with `code` (errno name), `errno`, `op`, `target` and libbpf's messages in `log`;
// helper/kernel/bridge.ts turns it into a BridgeError.
Napi::Error BridgeError(Napi::Env env, const char *op, const std::string &target, int err) {
  if (err < 0) err = -err;
  if (err == 0) err = EINVAL;
  std::string msg = std::string(op) + " " + target + ": " + strerror(err);
  Napi::Error e = Napi::Error::New(env, msg);
  const char *name = strerrorname_np(err);
  e.Set("code", Napi::String::New(env, name ? name : "EUNKNOWN"));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("op", Napi::String::New(env, op));
  e.Set("target", Napi::String::New(env, target));
  e.Set("log", Napi::String::New(env, LogTail()));
  return e;
}

// An argument error: the TypeScript wrapper validates first, so this means a bug there.
Napi::TypeError ArgError(Napi::Env env, const std::string &what) {
  return Napi::TypeError::New(env, "bridge: " + what);
}

class Capture;

// A batch is written into one of a few buffers allocated once (startRing's `reuse` slots), and
// handed back when JavaScript's callback returns. No allocation per batch, and no
// external memory for V8 to account for (it started a full collection every few batches).
struct SlotBatch {
  Capture *self;
  int slot;
  size_t used;
  uint32_t records;
};

// Destroys links on parallel threads: closing a uprobe link waits in the kernel (about 110 ms
// each here); in parallel the waits overlap in part (30 links: 2.4 s instead of 3.3 s).
void DestroyLinks(std::vector<bpf_link *> links) {
  std::vector<std::thread> threads;
  threads.reserve(links.size());
  for (bpf_link *l : links) threads.emplace_back([l] { bpf_link__destroy(l); });
  for (auto &t : threads) t.join();
}

// ---- the ring buffer's consumer ----------------------------------------------------------
//
// Written here rather than taken from libbpf's ring_buffer because of how that one maps the
// data area: twice, back to back, so that a record that wraps past the end reads as one piece.
// The kernel fills every page of a ring buffer mapping when it is made, so the second copy is
// resident from the start and a 32 MiB ring shows as 64 MiB of the helper's RSS. The same
// physical pages, but RSS is what a host's monitoring reads. This reader maps the data once and
// hands a wrapping record over in two pieces (the ring thread copies every record into a batch
// slot anyway, so the pieces cost nothing). The protocol is the kernel's (uapi linux/bpf.h:
// BPF_RINGBUF_*, kernel/bpf/ringbuf.c): a consumer position page we write, a producer
// position page and the data pages we read; each record is an 8-byte header (length with busy
// and discard bits) and its sample, 8-byte aligned; a header never wraps.
class RingReader {
 public:
  // One record: `a` then `b` (b_len 0 unless the record wraps past the end of the data).
  using Sample = void (*)(void *ctx, const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len);

  // Returns 0 or an errno.
  int Open(int map_fd, uint32_t data_size) {
    page_ = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    if (data_size == 0 || (data_size & (data_size - 1)) != 0 || data_size % page_ != 0) return EINVAL;
    fd_ = map_fd;
    size_ = data_size;
    void *c = mmap(nullptr, page_, PROT_READ | PROT_WRITE, MAP_SHARED, map_fd, 0);
    if (c == MAP_FAILED) return errno;
    cons_ = static_cast<uint8_t *>(c);
    // The producer position page and the data, once (offset: one page in).
    void *p = mmap(nullptr, page_ + size_, PROT_READ, MAP_SHARED, map_fd, static_cast<off_t>(page_));
    if (p == MAP_FAILED) {
      int err = errno;
      Close();
      return err;
    }
    prod_ = static_cast<uint8_t *>(p);
    data_ = prod_ + page_;
    return 0;
  }

  void Close() {
    if (cons_) munmap(cons_, page_);
    if (prod_) munmap(prod_, page_ + size_);
    cons_ = prod_ = data_ = nullptr;
  }

  int Fd() const { return fd_; }

  // Bytes BPF has reserved that the consumer has not passed yet (0 when not mapped).
  uint64_t Pending() const {
    if (!cons_ || !prod_) return 0;
    unsigned long cons = __atomic_load_n(reinterpret_cast<const unsigned long *>(cons_), __ATOMIC_ACQUIRE);
    unsigned long prod = __atomic_load_n(reinterpret_cast<const unsigned long *>(prod_), __ATOMIC_ACQUIRE);
    return prod > cons ? prod - cons : 0;
  }

  // Hands every committed record to `fn`, advancing the consumer position after each (so BPF's
  // fill level, which decides its shedding, counts only what is not yet copied out). Stops at a
  // record still being written.
  void Consume(Sample fn, void *ctx) {
    auto *cons_pos = reinterpret_cast<unsigned long *>(cons_);
    auto *prod_pos = reinterpret_cast<unsigned long *>(prod_);
    const unsigned long mask = size_ - 1;
    unsigned long cons = __atomic_load_n(cons_pos, __ATOMIC_ACQUIRE);
    for (;;) {
      unsigned long prod = __atomic_load_n(prod_pos, __ATOMIC_ACQUIRE);
      if (cons >= prod) return;
      while (cons < prod) {
        auto *hdr = reinterpret_cast<uint32_t *>(data_ + (cons & mask));
        uint32_t len = __atomic_load_n(hdr, __ATOMIC_ACQUIRE);
        if (len & BPF_RINGBUF_BUSY_BIT) return;  // reserved, not yet submitted
        uint32_t sample = len & ~(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT);
        if (!(len & BPF_RINGBUF_DISCARD_BIT)) {
          size_t at = ((cons & mask) + BPF_RINGBUF_HDR_SZ) & mask;
          size_t a = sample < size_ - at ? sample : size_ - at;
          fn(ctx, data_ + at, a, data_, sample - a);
        }
        cons += (static_cast<unsigned long>(sample) + BPF_RINGBUF_HDR_SZ + 7) & ~7UL;
        __atomic_store_n(cons_pos, cons, __ATOMIC_RELEASE);
      }
    }
  }

 private:
  int fd_ = -1;
  size_t page_ = 0, size_ = 0;
  uint8_t *cons_ = nullptr, *prod_ = nullptr, *data_ = nullptr;
};

class Capture : public Napi::ObjectWrap<Capture> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "Capture",
                       {
                           InstanceMethod("attachUprobe", &Capture::AttachUprobe),
                           InstanceMethod("attach", &Capture::Attach),
                           InstanceMethod("detach", &Capture::Detach),
                           InstanceMethod("detachMany", &Capture::DetachMany),
                           InstanceMethod("mapLookup", &Capture::MapLookup),
                           InstanceMethod("mapUpdate", &Capture::MapUpdate),
                           InstanceMethod("mapDelete", &Capture::MapDelete),
                           InstanceMethod("mapKeys", &Capture::MapKeys),
                           InstanceMethod("startRing", &Capture::StartRing),
                           InstanceMethod("stopRing", &Capture::StopRing),
                           InstanceMethod("ringStats", &Capture::RingStats),
                           InstanceMethod("ringPending", &Capture::RingPending),
                           InstanceMethod("close", &Capture::Close),
                       });
  }

  // new Capture(objectPath, { consts: {name: number|bigint}, maxEntries: {map: number} })
  explicit Capture(const Napi::CallbackInfo &info) : Napi::ObjectWrap<Capture>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsString() || !info[1].IsObject())
      throw ArgError(env, "Capture(path, options)");
    std::string path = info[0].As<Napi::String>();
    Napi::Object opts = info[1].As<Napi::Object>();

    LogReset();
    obj_ = bpf_object__open_file(path.c_str(), nullptr);
    if (!obj_) throw BridgeError(env, "open", path, errno);

    if (opts.Has("consts")) SetConsts(env, opts.Get("consts").As<Napi::Object>());
    if (opts.Has("maxEntries")) {
      Napi::Object sizes = opts.Get("maxEntries").As<Napi::Object>();
      Napi::Array names = sizes.GetPropertyNames();
      for (uint32_t i = 0; i < names.Length(); i++) {
        std::string name = names.Get(i).As<Napi::String>();
        bpf_map *map = FindMap(env, name);
        uint32_t n = sizes.Get(name).As<Napi::Number>().Uint32Value();
        int err = bpf_map__set_max_entries(map, n);
        if (err) throw BridgeError(env, "resize map", name, err);
      }
    }
    LogReset();
    // The verifier gives up with EAGAIN when a signal is pending for the loading thread (a
    // profiler's SIGPROF, SIGCHLD, ...): load on a thread of our own with every signal blocked.
    int err = 0;
    std::thread loader([this, &err] {
      sigset_t all;
      sigfillset(&all);
      pthread_sigmask(SIG_BLOCK, &all, nullptr);
      err = bpf_object__load(obj_);
    });
    loader.join();
    if (err) throw BridgeError(env, "load", path, err);
  }

  ~Capture() override { Free(); }

 private:
  bpf_object *obj_ = nullptr;
  std::map<uint32_t, bpf_link *> links_;
  uint32_t next_link_ = 1;

  RingReader ring_;
  bool ring_open_ = false;
  int stop_fd_ = -1;
  std::thread thread_;
  Napi::ThreadSafeFunction tsfn_;
  Napi::Promise::Deferred *stopped_ = nullptr;
  bool ring_running_ = false;
  bool close_pending_ = false;
  size_t batch_bytes_ = 1 << 20;
  int drain_ms_ = 0;
  // Why the ring thread ended before it was asked to (0: it did not), told to on_error_.
  int ring_err_ = 0;
  const char *ring_err_op_ = "";
  Napi::FunctionReference on_error_;
  std::atomic<uint64_t> batches_{0}, records_{0}, bytes_{0}, wrapped_{0};
  // The slots: the buffers, who may write them, and the batch being filled.
  size_t slot_cap_ = 0;
  std::vector<uint8_t *> slot_data_;                          // written by the ring thread
  std::vector<Napi::Reference<Napi::Buffer<uint8_t>>> slot_ref_;  // JS thread only
  std::mutex slot_mu_;
  std::condition_variable slot_cv_;
  std::vector<int> free_slots_;
  int cur_slot_ = -1;
  size_t cur_used_ = 0;
  uint32_t cur_records_ = 0;

  bpf_map *FindMap(Napi::Env env, const std::string &name) {
    bpf_map *map = bpf_object__find_map_by_name(obj_, name.c_str());
    if (!map) throw BridgeError(env, "find map", name, ENOENT);
    return map;
  }

  bpf_program *FindProgram(Napi::Env env, const std::string &name) {
    bpf_program *prog = bpf_object__find_program_by_name(obj_, name.c_str());
    if (!prog) throw BridgeError(env, "find program", name, ENOENT);
    return prog;
  }

  void CheckOpen(Napi::Env env) {
    if (!obj_) throw BridgeError(env, "use", "closed capture", EBADF);
  }

  // Load-time constants are `const volatile` globals in .rodata; their offsets come from the
  // object's BTF, so the bridge needs no knowledge of a particular program.
  void SetConsts(Napi::Env env, Napi::Object consts) {
    bpf_map *rodata = nullptr;
    bpf_map *m;
    bpf_object__for_each_map(m, obj_) {
      const char *name = bpf_map__name(m);
      size_t len = strlen(name);
      if (bpf_map__is_internal(m) && len >= 7 && strcmp(name + len - 7, ".rodata") == 0) rodata = m;
    }
    if (!rodata) throw BridgeError(env, "find", ".rodata", ENOENT);
    size_t size = 0;
    auto *data = const_cast<uint8_t *>(static_cast<const uint8_t *>(bpf_map__initial_value(rodata, &size)));
    const btf *btf = bpf_object__btf(obj_);
    int sec_id = btf ? btf__find_by_name_kind(btf, ".rodata", BTF_KIND_DATASEC) : -1;
    if (!data || sec_id < 0) throw BridgeError(env, "find BTF of", ".rodata", ENOENT);
    const btf_type *sec = btf__type_by_id(btf, sec_id);
    const btf_var_secinfo *vars = btf_var_secinfos(sec);

    Napi::Array names = consts.GetPropertyNames();
    for (uint32_t i = 0; i < names.Length(); i++) {
      std::string want = names.Get(i).As<Napi::String>();
      Napi::Value val = consts.Get(want);
      bool found = false;
      for (int v = 0; v < btf_vlen(sec); v++) {
        const btf_type *var = btf__type_by_id(btf, vars[v].type);
        if (want != btf__name_by_offset(btf, var->name_off)) continue;
        bool lossless = true;
        uint64_t x = val.IsBigInt() ? val.As<Napi::BigInt>().Uint64Value(&lossless)
                                    : static_cast<uint64_t>(val.As<Napi::Number>().Int64Value());
        if (!lossless) throw BridgeError(env, "set constant", want, ERANGE);
        uint32_t off = vars[v].offset, sz = vars[v].size;
        if (off + sz > size || (sz != 1 && sz != 2 && sz != 4 && sz != 8))
          throw BridgeError(env, "set constant", want, EINVAL);
        memcpy(data + off, &x, sz);  // little-endian: the low `sz` bytes
        found = true;
      }
      if (!found) throw BridgeError(env, "set constant", want, ENOENT);
    }
  }

  uint32_t Keep(bpf_link *link) {
    uint32_t id = next_link_++;
    links_[id] = link;
    return id;
  }

  // attachUprobe(program, binaryPath, { func?, offset?, pid?, retprobe? }) -> link id
  Napi::Value AttachUprobe(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    CheckOpen(env);
    if (info.Length() < 3 || !info[0].IsString() || !info[1].IsString() || !info[2].IsObject())
      throw ArgError(env, "attachUprobe(program, path, options)");
    std::string prog_name = info[0].As<Napi::String>();
    std::string path = info[1].As<Napi::String>();
    Napi::Object o = info[2].As<Napi::Object>();
    std::string func = o.Has("func") ? o.Get("func").As<Napi::String>().Utf8Value() : "";
    int64_t offset = o.Has("offset") ? o.Get("offset").As<Napi::Number>().Int64Value() : 0;
    int pid = o.Has("pid") ? o.Get("pid").As<Napi::Number>().Int32Value() : -1;
    bool ret = o.Has("retprobe") && o.Get("retprobe").ToBoolean();

    bpf_program *prog = FindProgram(env, prog_name);
    LIBBPF_OPTS(bpf_uprobe_opts, uo, .retprobe = ret, .func_name = func.empty() ? nullptr : func.c_str());
    LogReset();
    bpf_link *link = bpf_program__attach_uprobe_opts(prog, pid, path.c_str(), (size_t)offset, &uo);
    if (!link) {
      std::string target = path + (func.empty() ? "" : ":" + func) + (offset ? "+" + std::to_string(offset) : "");
      throw BridgeError(env, ret ? "attach uretprobe" : "attach uprobe", target, errno);
    }
    return Napi::Number::New(env, Keep(link));
  }

  // attach(program) -> link id, for programs whose section says where (tp_btf/, raw_tp/).
  Napi::Value Attach(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    CheckOpen(env);
    if (info.Length() < 1 || !info[0].IsString()) throw ArgError(env, "attach(program)");
    std::string name = info[0].As<Napi::String>();
    LogReset();
    bpf_link *link = bpf_program__attach(FindProgram(env, name));
    if (!link) throw BridgeError(env, "attach", name, errno);
    return Napi::Number::New(env, Keep(link));
  }

  Napi::Value Detach(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsNumber()) throw ArgError(env, "detach(linkId)");
    auto it = links_.find(info[0].As<Napi::Number>().Uint32Value());
    if (it == links_.end()) return Napi::Boolean::New(env, false);
    bpf_link__destroy(it->second);
    links_.erase(it);
    return Napi::Boolean::New(env, true);
  }

  // detachMany([ids]) -> how many of them were attached
  Napi::Value DetachMany(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsArray()) throw ArgError(env, "detachMany(linkIds)");
    Napi::Array ids = info[0].As<Napi::Array>();
    std::vector<bpf_link *> doomed;
    for (uint32_t i = 0; i < ids.Length(); i++) {
      auto it = links_.find(ids.Get(i).As<Napi::Number>().Uint32Value());
      if (it == links_.end()) continue;
      doomed.push_back(it->second);
      links_.erase(it);
    }
    DestroyLinks(doomed);
    return Napi::Number::New(env, static_cast<double>(doomed.size()));
  }

  // Per-CPU maps hold one value per possible CPU, each rounded up to 8 bytes.
  size_t ValueBytes(bpf_map *map) {
    size_t v = bpf_map__value_size(map);
    switch (bpf_map__type(map)) {
      case BPF_MAP_TYPE_PERCPU_ARRAY:
      case BPF_MAP_TYPE_PERCPU_HASH:
      case BPF_MAP_TYPE_LRU_PERCPU_HASH:
        return ((v + 7) & ~size_t(7)) * libbpf_num_possible_cpus();
      default:
        return v;
    }
  }

  bpf_map *MapArgs(const Napi::CallbackInfo &info, const char *usage, size_t nbufs) {
    Napi::Env env = info.Env();
    CheckOpen(env);
    if (info.Length() < 1 + nbufs || !info[0].IsString()) throw ArgError(env, usage);
    for (size_t i = 1; i <= nbufs; i++)
      if (!info[i].IsBuffer()) throw ArgError(env, usage);
    bpf_map *map = FindMap(env, info[0].As<Napi::String>());
    if (nbufs >= 1 && info[1].As<Napi::Buffer<uint8_t>>().Length() != bpf_map__key_size(map))
      throw ArgError(env, std::string(usage) + ": key size");
    if (nbufs >= 2 && info[2].As<Napi::Buffer<uint8_t>>().Length() != ValueBytes(map))
      throw ArgError(env, std::string(usage) + ": value size");
    return map;
  }

  // mapLookup(map, key) -> Buffer | null
  Napi::Value MapLookup(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    bpf_map *map = MapArgs(info, "mapLookup(map, key)", 1);
    Napi::Buffer<uint8_t> value = Napi::Buffer<uint8_t>::New(env, ValueBytes(map));
    if (bpf_map_lookup_elem(bpf_map__fd(map), info[1].As<Napi::Buffer<uint8_t>>().Data(), value.Data())) {
      if (errno == ENOENT) return env.Null();
      throw BridgeError(env, "map lookup", bpf_map__name(map), errno);
    }
    return value;
  }

  // mapUpdate(map, key, value)
  Napi::Value MapUpdate(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    bpf_map *map = MapArgs(info, "mapUpdate(map, key, value)", 2);
    if (bpf_map_update_elem(bpf_map__fd(map), info[1].As<Napi::Buffer<uint8_t>>().Data(),
                            info[2].As<Napi::Buffer<uint8_t>>().Data(), BPF_ANY))
      throw BridgeError(env, "map update", bpf_map__name(map), errno);
    return env.Undefined();
  }

  // mapDelete(map, key) -> whether the key was there
  Napi::Value MapDelete(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    bpf_map *map = MapArgs(info, "mapDelete(map, key)", 1);
    if (bpf_map_delete_elem(bpf_map__fd(map), info[1].As<Napi::Buffer<uint8_t>>().Data())) {
      if (errno == ENOENT) return Napi::Boolean::New(env, false);
      throw BridgeError(env, "map delete", bpf_map__name(map), errno);
    }
    return Napi::Boolean::New(env, true);
  }

  // mapKeys(map) -> Buffer[] (all keys of a hash map)
  Napi::Value MapKeys(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    bpf_map *map = MapArgs(info, "mapKeys(map)", 0);
    size_t ks = bpf_map__key_size(map);
    std::vector<uint8_t> key(ks), next(ks);
    Napi::Array out = Napi::Array::New(env);
    const void *prev = nullptr;
    while (bpf_map_get_next_key(bpf_map__fd(map), prev, next.data()) == 0) {
      out.Set(out.Length(), Napi::Buffer<uint8_t>::Copy(env, next.data(), ks));
      key.swap(next);
      prev = key.data();
    }
    if (errno != ENOENT) throw BridgeError(env, "map keys", bpf_map__name(map), errno);
    return out;
  }

  // ---- ring buffer: a native thread drains it and hands batches to JavaScript ------------

  // One record, in one piece or (wrapping past the end of the ring) two.
  static void OnSample(void *ctx, const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len) {
    auto *self = static_cast<Capture *>(ctx);
    size_t size = a_len + b_len;
    // Records are reserved in size classes; their first u32 says how much is meaningful.
    uint32_t used = 0;
    if (size >= sizeof(uint32_t)) {
      uint8_t head[sizeof(uint32_t)];
      size_t ha = a_len < sizeof(head) ? a_len : sizeof(head);
      memcpy(head, a, ha);
      memcpy(head + ha, b, sizeof(head) - ha);
      memcpy(&used, head, sizeof(used));
    }
    if (used < sizeof(uint32_t) || used > size) used = static_cast<uint32_t>(size);
    if (self->cur_slot_ >= 0 && self->cur_used_ + used > self->slot_cap_) self->Flush();
    if (self->cur_slot_ < 0) self->AcquireSlot();
    uint8_t *to = self->slot_data_[self->cur_slot_] + self->cur_used_;
    size_t first = used < a_len ? used : a_len;
    memcpy(to, a, first);
    if (used > first) {
      memcpy(to + first, b, used - first);
      self->wrapped_++;
    }
    self->cur_used_ += used;
    self->cur_records_++;
    if (self->cur_used_ >= self->batch_bytes_) self->Flush();
  }

  static void CallJsSlot(Napi::Env env, Napi::Function cb, SlotBatch *b) {
    Capture *self = b->self;
    if (env != nullptr) {
      try {
        cb.Call({self->slot_ref_[b->slot].Value(), Napi::Number::New(env, b->records), Napi::Number::New(env, static_cast<double>(b->used))});
      } catch (const Napi::Error &e) {
        napi_fatal_exception(env, e.Value());
      }
    }
    self->ReleaseSlot(b->slot);  // JavaScript is done with it (the callback may not keep it)
    delete b;
  }

  // Ring thread: waits for a slot JavaScript has handed back (back-pressure, as BlockingCall).
  void AcquireSlot() {
    std::unique_lock<std::mutex> lock(slot_mu_);
    slot_cv_.wait(lock, [this] { return !free_slots_.empty(); });
    cur_slot_ = free_slots_.back();
    free_slots_.pop_back();
    cur_used_ = 0;
    cur_records_ = 0;
  }

  void ReleaseSlot(int slot) {
    {
      std::lock_guard<std::mutex> lock(slot_mu_);
      free_slots_.push_back(slot);
    }
    slot_cv_.notify_one();
  }

  // Runs on the ring thread. Blocks while JavaScript has `queue` batches pending: that is
  // the back-pressure that makes the ring buffer fill, where BPF counts every lost record.
  void Flush() {
    if (cur_slot_ < 0) return;
    if (cur_used_ == 0) {
      ReleaseSlot(cur_slot_);
      cur_slot_ = -1;
      return;
    }
    auto *b = new SlotBatch{this, cur_slot_, cur_used_, cur_records_};
    cur_slot_ = -1;
    batches_++;
    records_ += b->records;
    bytes_ += b->used;
    if (tsfn_.BlockingCall(b, CallJsSlot) != napi_ok) {
      ReleaseSlot(b->slot);
      delete b;
    }
  }

  void CloseRing() {
    if (ring_open_) ring_.Close();
    ring_open_ = false;
  }

  // Ends the thread's loop early: what failed is told to JavaScript when the thread is done.
  void RingFailed(const char *op, int err) {
    ring_err_op_ = op;
    ring_err_ = err;
  }

  void RingLoop() {
    int ep = epoll_create1(EPOLL_CLOEXEC);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = ring_.Fd();  // a ring buffer map polls readable when BPF wakes it
    if (ep < 0)
      RingFailed("epoll_create1", errno);
    else if (epoll_ctl(ep, EPOLL_CTL_ADD, ev.data.fd, &ev) < 0)
      RingFailed("epoll_ctl", errno);
    ev.data.fd = stop_fd_;
    if (!ring_err_ && epoll_ctl(ep, EPOLL_CTL_ADD, stop_fd_, &ev) < 0) RingFailed("epoll_ctl", errno);
    bool stop = ring_err_ != 0;
    while (!stop) {
      epoll_event got[2];
      // With batched wakeups (BPF wakes the thread only past a watermark) a timer drains
      // whatever is there, so a record waits at most drain_ms_.
      int n = epoll_wait(ep, got, 2, drain_ms_ > 0 ? drain_ms_ : -1);
      if (n < 0 && errno != EINTR) {
        RingFailed("epoll_wait", errno);
        // EBADF/EINVAL: `ep` was closed under us and its number may be another file's now.
        if (errno == EBADF || errno == EINVAL) ep = -1;
        n = 0;
        stop = true;
      }
      for (int i = 0; i < n; i++)
        if (got[i].data.fd == stop_fd_) stop = true;
      ring_.Consume(OnSample, this);  // on stop too: what is in the ring is delivered
      Flush();
    }
    if (ep >= 0) close(ep);
    tsfn_.Release();
  }

  // startRing(map, onBatch(buffer, records, used), { batchBytes?, queue?, reuse?, drainMs? })
  // drainMs: also drain the ring this often (for BPF programs that submit with NO_WAKEUP).
  // reuse: N slots (default 4) of batchBytes (+ one record) allocated once; onBatch gets a slot
  // and the bytes used in it, valid only until it returns. No allocation per batch.
  Napi::Value StartRing(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    CheckOpen(env);
    if (info.Length() < 3 || !info[0].IsString() || !info[1].IsFunction() || !info[2].IsObject())
      throw ArgError(env, "startRing(map, onBatch, options)");
    if (ring_running_) throw BridgeError(env, "start ring", "already running", EBUSY);
    std::string name = info[0].As<Napi::String>();
    Napi::Object o = info[2].As<Napi::Object>();
    if (o.Has("batchBytes")) batch_bytes_ = o.Get("batchBytes").As<Napi::Number>().Uint32Value();
    uint32_t queue = o.Has("queue") ? o.Get("queue").As<Napi::Number>().Uint32Value() : 16;
    drain_ms_ = o.Has("drainMs") ? o.Get("drainMs").As<Napi::Number>().Int32Value() : 0;
    uint32_t slots = o.Has("reuse") ? o.Get("reuse").As<Napi::Number>().Uint32Value() : 4;
    if (slots < 1 || slots > 64) throw ArgError(env, "startRing: reuse must be 1..64");
    ring_err_ = 0;
    on_error_.Reset();
    if (o.Has("onError") && o.Get("onError").IsFunction()) on_error_ = Napi::Persistent(o.Get("onError").As<Napi::Function>());
    // Room for a full batch plus the largest record (a 16 KiB chunk and its header).
    slot_cap_ = batch_bytes_ + sizeof(struct cap_data) + CAP_CHUNK_MAX;
    slot_data_.clear();
    slot_ref_.clear();
    free_slots_.clear();
    for (uint32_t i = 0; i < slots; i++) {
      Napi::Buffer<uint8_t> b = Napi::Buffer<uint8_t>::New(env, slot_cap_);
      slot_data_.push_back(b.Data());
      slot_ref_.push_back(Napi::Persistent(b));
      free_slots_.push_back(static_cast<int>(i));
    }
    cur_slot_ = -1;
    if (queue < slots) queue = slots;

    bpf_map *map = FindMap(env, name);
    LogReset();
    if (bpf_map__type(map) != BPF_MAP_TYPE_RINGBUF) throw BridgeError(env, "open ring buffer", name, EINVAL);
    int ring_err = ring_.Open(bpf_map__fd(map), bpf_map__max_entries(map));
    if (ring_err) throw BridgeError(env, "map ring buffer", name, ring_err);
    ring_open_ = true;
    stop_fd_ = eventfd(0, EFD_CLOEXEC);
    if (stop_fd_ < 0) {
      int err = errno;
      CloseRing();
      throw BridgeError(env, "eventfd", name, err);
    }
    // The finalizer runs on the JS thread once the ring thread has released the function
    // and every batch it sent has been handled: then the thread is joined.
    tsfn_ = Napi::ThreadSafeFunction::New(env, info[1].As<Napi::Function>(), "https-capture ring", queue, 1,
                                          [this](Napi::Env) { RingEnded(); });
    ring_running_ = true;
    Ref();  // keep this object alive while the thread runs
    thread_ = std::thread([this] { RingLoop(); });
    return env.Undefined();
  }

  void RingEnded() {
    if (thread_.joinable()) thread_.join();
    slot_ref_.clear();
    slot_data_.clear();
    CloseRing();
    close(stop_fd_);
    stop_fd_ = -1;
    ring_running_ = false;
    // A thread that ended on its own, not asked to: JavaScript hears why (a stop still resolves).
    if (ring_err_ && !on_error_.IsEmpty()) {
      Napi::Env env = Env();
      Napi::HandleScope scope(env);
      Napi::Error e = BridgeError(env, ring_err_op_, "ring buffer thread", ring_err_);
      try {
        on_error_.Call({e.Value()});
      } catch (const Napi::Error &x) {
        napi_fatal_exception(env, x.Value());
      }
    }
    on_error_.Reset();
    if (stopped_) {
      stopped_->Resolve(Env().Undefined());
      delete stopped_;
      stopped_ = nullptr;
    }
    if (close_pending_) Free();
    Unref();
  }

  // stopRing() -> Promise that resolves once every record in the ring has been delivered.
  Napi::Value StopRing(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    auto d = Napi::Promise::Deferred::New(env);
    if (!ring_running_) {
      d.Resolve(env.Undefined());
      return d.Promise();
    }
    if (!stopped_) {
      stopped_ = new Napi::Promise::Deferred(d);
      uint64_t one = 1;
      if (write(stop_fd_, &one, sizeof(one)) < 0) {
        // cannot happen for an eventfd below its maximum; the thread then ends at exit
      }
      return d.Promise();
    }
    return stopped_->Promise();
  }

  // ringPending() -> bytes waiting in the ring buffer (read from its positions, no syscall).
  Napi::Value RingPending(const Napi::CallbackInfo &info) {
    return Napi::Number::New(info.Env(), static_cast<double>(ring_open_ ? ring_.Pending() : 0));
  }

  Napi::Value RingStats(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("batches", Napi::Number::New(env, static_cast<double>(batches_.load())));
    o.Set("records", Napi::Number::New(env, static_cast<double>(records_.load())));
    o.Set("bytes", Napi::Number::New(env, static_cast<double>(bytes_.load())));
    // Records that wrapped past the end of the ring and were put together from two pieces.
    o.Set("wrapped", Napi::Number::New(env, static_cast<double>(wrapped_.load())));
    return o;
  }

  // close(): detaches every probe now; the object goes once the ring thread has ended.
  Napi::Value Close(const Napi::CallbackInfo &info) {
    std::vector<bpf_link *> all;
    for (auto &l : links_) all.push_back(l.second);
    links_.clear();
    DestroyLinks(all);
    if (ring_running_) {
      close_pending_ = true;
      uint64_t one = 1;
      if (write(stop_fd_, &one, sizeof(one)) < 0) {
      }
    } else {
      Free();
    }
    return info.Env().Undefined();
  }

  void Free() {
    for (auto &l : links_) bpf_link__destroy(l.second);
    links_.clear();
    if (ring_running_) return;  // RingEnded() frees the rest
    CloseRing();
    if (obj_) bpf_object__close(obj_);
    obj_ = nullptr;
  }
};

// clock(): [CLOCK_REALTIME ns, CLOCK_MONOTONIC ns] read back to back, to turn the BPF
// timestamps (monotonic) into wall-clock time.
Napi::Value Clock(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  timespec mono1, real, mono2;
  clock_gettime(CLOCK_MONOTONIC, &mono1);
  clock_gettime(CLOCK_REALTIME, &real);
  clock_gettime(CLOCK_MONOTONIC, &mono2);
  auto ns = [](const timespec &t) -> uint64_t { return uint64_t(t.tv_sec) * 1000000000u + uint64_t(t.tv_nsec); };
  Napi::Array a = Napi::Array::New(env, 2);
  a.Set(0u, Napi::BigInt::New(env, ns(real)));
  a.Set(1u, Napi::BigInt::New(env, (ns(mono1) + ns(mono2)) / 2));
  return a;
}

Napi::Value PossibleCpus(const Napi::CallbackInfo &info) {
  return Napi::Number::New(info.Env(), libbpf_num_possible_cpus());
}

Napi::Value LibbpfVersion(const Napi::CallbackInfo &info) {
  return Napi::String::New(info.Env(), libbpf_version_string());
}

// mallopt(M_MMAP_THRESHOLD): glibc has no other way in. Setting it also stops glibc raising the
// threshold each time a large block is freed (helper/kernel/bridge.ts says why that matters).
Napi::Value PinMmapThreshold(const Napi::CallbackInfo &info) {
  const int bytes = info[0].As<Napi::Number>().Int32Value();
  return Napi::Boolean::New(info.Env(), mallopt(M_MMAP_THRESHOLD, bytes) == 1);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  const char *dbg = getenv("HTTPS_CAPTURE_LIBBPF_DEBUG");
  g_log_echo = dbg && *dbg && strcmp(dbg, "0") != 0;
  libbpf_set_print(LibbpfPrint);
  exports.Set("Capture", Capture::Init(env));
  exports.Set("clock", Napi::Function::New(env, Clock));
  exports.Set("possibleCpus", Napi::Function::New(env, PossibleCpus));
  exports.Set("libbpfVersion", Napi::Function::New(env, LibbpfVersion));
  exports.Set("pinMmapThreshold", Napi::Function::New(env, PinMmapThreshold));
  return exports;
}

}  // namespace

NODE_API_MODULE(bridge, Init)
