// DynamicBatcher implementation; see dynamic_batcher.h for the batching rules and locking.
#include "batcher/dynamic_batcher.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace mlserve {
namespace {

int64_t Ns(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
}

// t + us, saturated at time_point::max(). A timeout or queue delay too long for the clock (e.g.
// INT64_MAX meaning "forever") would otherwise overflow the int64 nanosecond arithmetic (UB,
// in practice a deadline in the past); one beyond time_point::max() can never pass anyway.
Clock::time_point AddMicrosSaturated(Clock::time_point t, int64_t us) {
  const int64_t room_us = Ns(Clock::time_point::max() - t) / 1000;
  return us < room_us ? t + std::chrono::microseconds(us) : Clock::time_point::max();
}

void SetFinished(Request& r, RequestState state, ErrorCode code = ErrorCode::kInternal,
                 const std::string& msg = "") {
  std::lock_guard<std::mutex> lock(r.mu);
  r.state = state;
  r.error_code = code;
  r.error_message = msg;
}

}  // namespace

void BatcherConfig::Validate() const {
  auto bad = [](const std::string& m) { ThrowInvalid("batcher config: " + m); };
  if (max_batch_size < 1) bad("max_batch_size must be >= 1, got " + std::to_string(max_batch_size));
  for (int64_t p : preferred_batch_sizes) {
    if (p < 1 || p > max_batch_size) {
      bad("preferred_batch_sizes entry " + std::to_string(p) + " must be in 1..max_batch_size (" +
          std::to_string(max_batch_size) + ")");
    }
  }
  if (max_queue_delay_us < 0) bad("max_queue_delay_us must be >= 0");
  if (max_queue_size < 0) bad("max_queue_size must be >= 0 (0 = unbounded)");
  if (default_timeout_us < 0) bad("default_timeout_us must be >= 0 (0 = none)");
  if (priority_levels < 1) bad("priority_levels must be >= 1");
  if (default_priority_level < 0 || default_priority_level > priority_levels) {
    bad("default_priority_level must be in 0..priority_levels (" + std::to_string(priority_levels) +
        "), got " + std::to_string(default_priority_level));
  }
  if (instance_count < 1 || instance_count > 256) bad("instance_count must be in 1..256");
  if (normalize_threads < 1 || normalize_threads > 256) bad("normalize_threads must be in 1..256");
}

DynamicBatcher::DynamicBatcher(std::shared_ptr<const FeaturePlan> plan,
                               std::unique_ptr<Backend> backend, BatcherConfig config)
    : plan_(std::move(plan)),
      backend_(std::move(backend)),
      config_(std::move(config)),
      sampler_(plan_ ? plan_->f_in() : 0) {
  if (!plan_) ThrowInvalid("batcher: no feature plan");
  if (!backend_) ThrowInvalid("batcher: no backend");
  config_.Validate();
  queues_.resize(static_cast<size_t>(config_.priority_levels));
  stats_.batch_sizes.assign(static_cast<size_t>(config_.max_batch_size + 1), 0);
  // Executors first: when one cannot be made (e.g. no GPU) nothing else is left to clean up.
  for (int32_t i = 0; i < config_.instance_count; ++i) {
    std::unique_ptr<RawBatchExecutor> executor =
        backend_->NewExecutor(*plan_, i, config_.max_batch_size);
    if (!executor) break;  // the backend runs on normalized host rows
    executors_.push_back(std::move(executor));
  }
  event_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (event_fd_ < 0) {
    throw Error(ErrorCode::kInternal, std::string("batcher: eventfd failed: ") + std::strerror(errno));
  }
  std::lock_guard<std::mutex> lock(join_mu_);
  for (int32_t i = 0; i < config_.instance_count; ++i) {
    const auto index = static_cast<size_t>(i);
    RawBatchExecutor* executor = index < executors_.size() ? executors_[index].get() : nullptr;
    workers_.emplace_back([this, executor] { WorkerLoop(executor); });
  }
}

DynamicBatcher::~DynamicBatcher() {
  Shutdown(false);
  if (event_fd_ >= 0) close(event_fd_);
}

std::shared_ptr<Request> DynamicBatcher::Submit(const float* x, int64_t rows, int32_t priority,
                                                int64_t timeout_us, bool notify_queue,
                                                std::string tag, bool wake_workers) {
  if (rows < 1 || rows > config_.max_batch_size) {
    ThrowInvalid("request has " + std::to_string(rows) + " rows; this model takes 1.." +
                 std::to_string(config_.max_batch_size) +
                 " rows per request (max_batch_size); split larger inputs");
  }
  if (priority < 0 || priority > config_.priority_levels) {
    ThrowInvalid("priority " + std::to_string(priority) + " is out of range: use 0 (default) or 1.." +
                 std::to_string(config_.priority_levels) + " (1 is highest)");
  }
  auto r = std::make_shared<Request>();
  r->input.assign(x, x + rows * plan_->f_in());
  r->rows = rows;
  const int32_t level = priority == 0
                            ? (config_.default_priority_level == 0 ? config_.priority_levels
                                                                   : config_.default_priority_level)
                            : priority;
  r->level = level - 1;
  r->notify_queue = notify_queue;
  r->tag = std::move(tag);
  const int64_t t_us = timeout_us < 0 ? config_.default_timeout_us : timeout_us;
  r->enqueued = Clock::now();
  if (t_us > 0) r->deadline = AddMicrosSaturated(r->enqueued, t_us);
  bool wake;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      std::lock_guard<std::mutex> s(stats_mu_);
      ++stats_.rejected;
      throw Error(ErrorCode::kUnavailable, "model is shutting down; send the request elsewhere");
    }
    if (config_.max_queue_size > 0 && queued_requests_ >= config_.max_queue_size) {
      std::lock_guard<std::mutex> s(stats_mu_);
      ++stats_.rejected;
      throw Error(ErrorCode::kQueueFull, "queue is full (" + std::to_string(config_.max_queue_size) +
                                             " requests queued); retry later");
    }
    r->id = next_id_++;
    queues_[static_cast<size_t>(r->level)].push_back(r);
    if (t_us > 0) {
      r->deadline_it = deadlines_.emplace(r->deadline, r.get());
      r->in_deadlines = true;
    }
    ++queued_requests_;
    queued_rows_ += rows;
    {
      std::lock_guard<std::mutex> s(stats_mu_);
      ++stats_.requests;
      stats_.rows += rows;
    }
    // Wake a worker only when this request can change its decision: one is idle (empty queue),
    // the queue may now form a full or preferred batch, batches are cut at once, the hold hook
    // may be satisfied, or this request's deadline may come before the worker's next wake-up.
    // A worker waiting out max_queue_delay_us wakes at that time anyway; waking it for every
    // request cost a futex syscall and a lock round-trip per request under load.
    const auto& preferred = config_.preferred_batch_sizes;
    wake = idle_workers_ > 0 || config_.max_queue_delay_us == 0 ||
           queued_rows_ >= config_.max_batch_size || t_us > 0 ||
           std::find(preferred.begin(), preferred.end(), queued_rows_) != preferred.end() ||
           (hold_until_queued_ > 0 && queued_requests_ >= hold_until_queued_);
  }
  if (wake && wake_workers) cv_.notify_one();
  return r;
}

int64_t DynamicBatcher::RunReady(int64_t max_batches, int64_t max_compute_ns) {
  std::unique_lock<std::mutex> runner(inline_mu_, std::try_to_lock);
  // preserve_ordering: an inline batch could wait (holding the caller's GIL) for a worker's
  // earlier batch that needs the GIL to finish; such batchers only run on their workers.
  bool eligible = runner.owns_lock() && executors_.empty() && !config_.preserve_ordering;
  if (eligible) {
    // Over the bound: the workers run this one, and the estimate decays by 1/8, so a model
    // that got faster (or a one-off slow batch) is tried inline again after a few batches.
    const int64_t ewma = inline_ewma_ns_;
    if (ewma > max_compute_ns) {
      inline_ewma_ns_ = ewma - ewma / 8;
      eligible = false;
    }
  }
  std::vector<std::shared_ptr<Request>> batch;
  int64_t ran = 0;
  std::unique_lock<std::mutex> lock(mu_);
  while (eligible && ran < max_batches && !stopping_) {
    const Clock::time_point now = Clock::now();
    ExpireLocked(now);
    int64_t rows = 0;
    Clock::time_point wake;
    if (!ShouldCutLocked(now, &rows, &wake)) break;
    TakeBatchLocked(rows, &batch);
    const uint64_t seq = next_batch_seq_++;
    lock.unlock();
    const Clock::time_point t0 = Clock::now();
    ProcessBatch(batch, seq, &inline_buffer_, nullptr);
    // EWMA (weight 1/8) of how long an inline batch holds the caller's thread.
    inline_ewma_ns_ += (Ns(Clock::now() - t0) - inline_ewma_ns_) / 8;
    batch.clear();
    ++ran;
    lock.lock();
  }
  // Whatever is still queued is the workers' (not cut yet, not eligible, shutting down),
  // unless the caller stopped at max_batches and comes back for the rest (RunReady's contract).
  const bool leftover = queued_requests_ > 0 && ran < max_batches;
  lock.unlock();
  if (leftover) cv_.notify_one();
  return ran > 0 ? ran : -1;
}

void DynamicBatcher::UnindexLocked(Request& r) {
  if (r.in_deadlines) {
    deadlines_.erase(r.deadline_it);
    r.in_deadlines = false;
  }
  --queued_requests_;
  queued_rows_ -= r.rows;
}

void DynamicBatcher::FailQueuedLocked(const std::shared_ptr<Request>& r, ErrorCode code,
                                      const std::string& msg) {
  UnindexLocked(*r);
  SetFinished(*r, RequestState::kFailed, code, msg);
}

bool DynamicBatcher::Cancel(uint64_t id) {
  std::shared_ptr<Request> found;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& q : queues_) {
      for (auto it = q.begin(); it != q.end(); ++it) {
        if ((*it)->id != id) continue;
        bool queued;
        {
          std::lock_guard<std::mutex> g((*it)->mu);
          queued = (*it)->state == RequestState::kQueued;
        }
        if (!queued) return false;
        found = *it;
        q.erase(it);
        break;
      }
      if (found) break;
    }
    if (!found) return false;
    UnindexLocked(*found);
    SetFinished(*found, RequestState::kCancelled, ErrorCode::kUnavailable, "request was cancelled");
  }
  found->cv.notify_all();
  {
    std::lock_guard<std::mutex> s(stats_mu_);
    ++stats_.cancelled;
  }
  cv_.notify_all();  // the queue changed: a waiting worker may now cut a batch
  return true;
}

bool DynamicBatcher::Wait(Request& r, std::chrono::nanoseconds timeout) {
  std::unique_lock<std::mutex> lock(r.mu);
  return r.cv.wait_for(lock, timeout, [&] { return r.Finished(); });
}

std::vector<std::shared_ptr<Request>> DynamicBatcher::DrainCompleted() {
  // Read the eventfd first: a publish racing with us then either lands in this swap or leaves
  // the eventfd readable for the next wake-up; no completion is ever stranded.
  uint64_t value;
  while (read(event_fd_, &value, sizeof(value)) < 0 && errno == EINTR) {
  }
  std::vector<std::shared_ptr<Request>> out;
  std::lock_guard<std::mutex> lock(cq_mu_);
  out.swap(completed_);
  return out;
}

void DynamicBatcher::Publish(const std::vector<std::shared_ptr<Request>>& finished) {
  bool any_queue = false;
  for (const auto& r : finished) {
    r->cv.notify_all();
    any_queue = any_queue || r->notify_queue;
  }
  if (!any_queue) return;
  bool was_empty;
  {
    std::lock_guard<std::mutex> lock(cq_mu_);
    was_empty = completed_.empty();
    for (const auto& r : finished) {
      if (r->notify_queue) completed_.push_back(r);
    }
  }
  // A non-empty queue was already signalled and not yet swapped out by DrainCompleted (which
  // reads the eventfd before swapping): that drain takes these too. Saves a syscall per batch.
  if (!was_empty) return;
  const uint64_t one = 1;
  while (write(event_fd_, &one, sizeof(one)) < 0 && errno == EINTR) {
  }
}

void DynamicBatcher::HoldUntilQueued(int64_t min_queued) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    hold_until_queued_ = std::max<int64_t>(0, min_queued);
  }
  cv_.notify_all();
}

Clock::time_point DynamicBatcher::ExpireLocked(Clock::time_point now) {
  std::vector<std::shared_ptr<Request>> expired;
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    Request* raw = deadlines_.begin()->second;
    // Find the owning shared_ptr in its level queue (expiry is rare; the scan is bounded).
    auto& q = queues_[static_cast<size_t>(raw->level)];
    auto it = std::find_if(q.begin(), q.end(), [&](const auto& p) { return p.get() == raw; });
    MLSERVE_CHECK(it != q.end());
    std::shared_ptr<Request> r = *it;
    q.erase(it);
    FailQueuedLocked(r, ErrorCode::kDeadlineExceeded,
                     "request timed out after waiting " + std::to_string(Ns(now - r->enqueued) / 1000) +
                         " us in the queue (timeout " +
                         std::to_string(Ns(r->deadline - r->enqueued) / 1000) +
                         " us); it was not executed");
    expired.push_back(std::move(r));
  }
  if (!expired.empty()) {
    {
      std::lock_guard<std::mutex> s(stats_mu_);
      stats_.timed_out += static_cast<int64_t>(expired.size());
    }
    Publish(expired);
  }
  return deadlines_.empty() ? Clock::time_point::max() : deadlines_.begin()->first;
}

bool DynamicBatcher::ShouldCutLocked(Clock::time_point now, int64_t* rows, Clock::time_point* wake) {
  *wake = Clock::time_point::max();
  if (queued_requests_ == 0) return false;
  if (hold_until_queued_ > 0 && !stopping_) {
    if (queued_requests_ < hold_until_queued_) return false;
    hold_until_queued_ = 0;  // one-shot
  }
  const int64_t max_rows = config_.max_batch_size;
  int64_t total = 0, included = 0;
  bool full = false;
  Clock::time_point oldest = Clock::time_point::max();
  // Row counts at request boundaries of the candidate (for preferred sizes after the delay).
  int64_t best_preferred = 0;
  const auto& preferred = config_.preferred_batch_sizes;
  auto is_preferred = [&](int64_t n) {
    return std::find(preferred.begin(), preferred.end(), n) != preferred.end();
  };
  for (const auto& q : queues_) {
    if (q.empty()) continue;
    oldest = std::min(oldest, q.front()->enqueued);  // FIFO per level: the front is its oldest
    for (const auto& r : q) {
      if (full) break;
      if (total + r->rows > max_rows) {
        full = true;
        break;
      }
      total += r->rows;
      ++included;
      if (is_preferred(total)) best_preferred = total;
    }
  }
  if (total == max_rows) full = true;
  const bool all_included = included == queued_requests_;
  const Clock::time_point delay_end = AddMicrosSaturated(oldest, config_.max_queue_delay_us);
  if (full || stopping_ || config_.max_queue_delay_us == 0 || now >= delay_end) {
    *rows = (!full && best_preferred > 0) ? best_preferred : total;
    return true;
  }
  if (all_included && is_preferred(total)) {
    *rows = total;
    return true;
  }
  *wake = delay_end;
  return false;
}

void DynamicBatcher::TakeBatchLocked(int64_t rows, std::vector<std::shared_ptr<Request>>* batch) {
  int64_t taken = 0;
  for (auto& q : queues_) {
    while (taken < rows && !q.empty()) {
      std::shared_ptr<Request> r = std::move(q.front());
      q.pop_front();
      MLSERVE_CHECK(taken + r->rows <= rows);
      taken += r->rows;
      UnindexLocked(*r);
      {
        std::lock_guard<std::mutex> g(r->mu);
        r->state = RequestState::kRunning;
      }
      batch->push_back(std::move(r));
    }
    if (taken >= rows) break;
  }
  MLSERVE_CHECK(taken == rows);
}

void DynamicBatcher::WorkerLoop(RawBatchExecutor* executor) {
  std::vector<std::shared_ptr<Request>> batch;
  std::vector<float> buffer;  // reused across batches: no allocation once it reached full size
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    int64_t rows = 0;
    for (;;) {
      const Clock::time_point now = Clock::now();
      const Clock::time_point next_deadline = ExpireLocked(now);
      if (stopping_ && (!drain_ || queued_requests_ == 0)) {
        lock.unlock();
        backend_->ThreadExit();
        return;
      }
      Clock::time_point wake;
      if (ShouldCutLocked(now, &rows, &wake)) break;
      wake = std::min(wake, next_deadline);
      if (wake == Clock::time_point::max()) {
        ++idle_workers_;
        cv_.wait(lock);
        --idle_workers_;
      } else {
        cv_.wait_until(lock, wake);
      }
    }
    TakeBatchLocked(rows, &batch);
    const uint64_t seq = next_batch_seq_++;
    const bool more = queued_requests_ > 0;
    lock.unlock();
    if (more) cv_.notify_one();  // another instance may cut the next batch meanwhile
    ProcessBatch(batch, seq, &buffer, executor);
    batch.clear();
    lock.lock();
  }
}

void DynamicBatcher::ProcessBatch(std::vector<std::shared_ptr<Request>>& batch, uint64_t seq,
                                  std::vector<float>* buffer, RawBatchExecutor* executor) {
  const int64_t f_in = plan_->f_in();
  const int64_t d = plan_->f_out();
  int64_t n = 0;
  for (const auto& r : batch) n += r->rows;
  // Host path: normalized rows. Executor path: the raw rows go to its staging buffer (a gather
  // only; it normalizes inside Run, where failures are caught with the model's).
  float* staging = executor != nullptr ? executor->Staging(n) : nullptr;
  if (executor == nullptr) buffer->resize(static_cast<size_t>(n * d));

  const Clock::time_point t0 = Clock::now();
  int64_t off = 0;
  for (const auto& r : batch) {
    r->queue_ns = Ns(t0 - r->enqueued);
    if (executor != nullptr) {
      std::memcpy(staging + off * f_in, r->input.data(), sizeof(float) * static_cast<size_t>(r->rows * f_in));
    } else {
      plan_->Transform(r->input.data(), r->rows, f_in, buffer->data() + off * d, config_.histograms,
                       config_.normalize_threads);
    }
    off += r->rows;
  }
  const Clock::time_point t1 = Clock::now();

  auto out = std::make_shared<BatchOutput>();
  bool ok = true;
  ErrorCode code = ErrorCode::kInternal;
  std::string msg;
  try {
    if (executor != nullptr) {
      executor->Run(n, config_.histograms, out.get());
    } else {
      backend_->Execute(buffer->data(), n, d, out.get());
    }
    if (out->rows != n || static_cast<int64_t>(out->data.size()) != n * out->width) {
      ok = false;
      msg = "backend '" + backend_->Name() + "' returned " + std::to_string(out->rows) +
            " rows for a batch of " + std::to_string(n) + "; it must return one row per input row";
    }
  } catch (const Error& e) {
    ok = false;
    code = e.code();
    msg = e.what();
  } catch (const std::exception& e) {
    ok = false;
    msg = "backend '" + backend_->Name() + "' failed: " + e.what();
  } catch (...) {
    ok = false;
    msg = "backend '" + backend_->Name() + "' failed with an unknown exception";
  }
  const Clock::time_point t2 = Clock::now();
  if (ok) {  // before publishing: a client holding its answer finds its prediction logged
    sampler_.Record(batch, *out);
    prediction_log_.Record(batch, *out);
    prediction_export_.Record(batch, *out, f_in);
  }

  std::unique_lock<std::mutex> order(order_mu_, std::defer_lock);
  if (config_.preserve_ordering) {
    order.lock();
    order_cv_.wait(order, [&] { return next_publish_seq_ == seq; });
  }
  const Clock::time_point t3 = Clock::now();  // results are published from here on
  off = 0;
  for (const auto& r : batch) {
    std::lock_guard<std::mutex> g(r->mu);
    if (ok) {
      r->output = out;
      r->row_offset = off;
      r->state = RequestState::kDone;
    } else {
      r->state = RequestState::kFailed;
      r->error_code = code;
      r->error_message = msg;
    }
    off += r->rows;
  }
  Publish(batch);
  if (config_.preserve_ordering) {
    ++next_publish_seq_;
    order.unlock();
    order_cv_.notify_all();
  }

  std::lock_guard<std::mutex> s(stats_mu_);
  ++stats_.batches;
  ++stats_.batch_sizes[static_cast<size_t>(n)];
  if (ok) {
    stats_.completed += static_cast<int64_t>(batch.size());
  } else {
    stats_.failed += static_cast<int64_t>(batch.size());
  }
  // `batch` still owns every request; enqueued and queue_ns are not written after being set.
  for (const auto& r : batch) {
    stats_.queue.Record(r->queue_ns);
    stats_.request.Record(Ns(t3 - r->enqueued));
  }
  stats_.normalize.Record(Ns(t1 - t0));
  stats_.compute.Record(Ns(t2 - t1));
}

void DynamicBatcher::Shutdown(bool drain) {
  std::vector<std::shared_ptr<Request>> failed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      stopping_ = true;
      drain_ = drain;
      if (!drain) {
        for (auto& q : queues_) {
          for (auto& r : q) {
            FailQueuedLocked(r, ErrorCode::kUnavailable,
                             "model was unloaded before the request ran; retry on another instance");
            failed.push_back(r);
          }
          q.clear();
        }
      }
    }
    hold_until_queued_ = 0;
  }
  if (!failed.empty()) {
    {
      std::lock_guard<std::mutex> s(stats_mu_);
      stats_.failed += static_cast<int64_t>(failed.size());
    }
    Publish(failed);
  }
  cv_.notify_all();
  std::lock_guard<std::mutex> j(join_mu_);
  for (auto& t : workers_) {
    if (t.joinable()) t.join();
  }
  workers_.clear();
}

BatcherStats DynamicBatcher::Stats() const {
  int64_t queued;
  {
    std::lock_guard<std::mutex> lock(mu_);
    queued = queued_requests_;
  }
  BatcherStats out;
  {
    std::lock_guard<std::mutex> s(stats_mu_);
    out = stats_;
  }
  out.queued = queued;
  // executors_ is fixed from construction to destruction; AddStats is thread-safe.
  out.executors = static_cast<int32_t>(executors_.size());
  for (const auto& executor : executors_) executor->AddStats(&out.executor);
  return out;
}

}  // namespace mlserve
