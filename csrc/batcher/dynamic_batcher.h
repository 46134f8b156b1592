// DynamicBatcher: Triton-style dynamic batching for one loaded model version.
//
// Requests (1..max_batch_size raw rows each, copied in at Submit) wait in one FIFO per priority
// level. N worker threads ("instances") each form a batch under the queue mutex, then, without
// any lock, normalize every request's rows with the FeaturePlan straight into one contiguous
// batch buffer (gather and normalization are the same pass, histograms too), hand the buffer to
// the Backend, and publish each request's slice of the output. A backend that normalizes batches
// itself (a model placed on a GPU) gives each instance a RawBatchExecutor: the worker then only
// gathers the raw rows into the executor's (page-locked) staging buffer and lets it run.
//
// A batch is cut when
//   - the queued rows reach max_batch_size, or the next request does not fit (never split), or
//   - every queued request is in the candidate and its row count is a preferred batch size, or
//   - the oldest queued request has waited max_queue_delay_us (then the largest preferred size
//     that ends on a request boundary is taken, else everything that fits), or
//   - the batcher is shutting down.
// Requests whose deadline passes while queued fail with kDeadlineExceeded and are never run.
//
// Completion: a request submitted with notify_queue is pushed, once finished, to the completion
// queue, and the eventfd completion_fd() is signalled once per batch, so an event loop can
// complete every finished request on one wake-up (DrainCompleted). Other requests are waited on
// with Wait(), which blocks on the request's own condition variable.
//
// Thread-safety: every public method is thread-safe. Locks: mu_ (queue) may be held while taking
// a Request's mu or cq_mu_ (leaf locks); no lock is held while normalizing or executing.
// Ownership: Submit returns a shared_ptr<Request>; the queue, the worker and the completion
// queue each hold a reference while they need it, so a caller may drop its handle at any time.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "backends/backend.h"
#include "common/error.h"
#include "common/latency_histogram.h"
#include "monitor/prediction_export.h"
#include "monitor/prediction_log.h"
#include "monitor/row_sampler.h"
#include "plan/feature_plan.h"

namespace mlserve {

using Clock = std::chrono::steady_clock;

struct BatcherConfig {
  int64_t max_batch_size = 64;               // rows per batch (and per request at most)
  std::vector<int64_t> preferred_batch_sizes;
  int64_t max_queue_delay_us = 100;          // measured from the oldest queued request
  int64_t max_queue_size = 0;                // queued requests; 0 = unbounded
  int64_t default_timeout_us = 0;            // 0 = no timeout
  int32_t priority_levels = 1;               // priorities 1..levels, 1 highest; 0 = default
  int32_t default_priority_level = 0;        // 0 = the lowest level
  bool preserve_ordering = false;            // publish batches in the order they were formed
  int32_t instance_count = 1;                // worker threads
  int32_t normalize_threads = 1;             // threads per batch for normalization
  bool histograms = true;                    // count drift histograms while normalizing

  // Throws kInvalidInput naming the field(s).
  void Validate() const;
};

enum class RequestState : int { kQueued = 0, kRunning = 1, kDone = 2, kFailed = 3, kCancelled = 4 };

struct Request;
using DeadlineIndex = std::multimap<Clock::time_point, Request*>;

struct Request {
  uint64_t id = 0;
  std::vector<float> input;  // rows * f_in raw floats
  int64_t rows = 0;
  int32_t level = 0;         // priority level index, 0 = highest
  Clock::time_point enqueued;
  Clock::time_point deadline = Clock::time_point::max();
  bool notify_queue = false;
  std::string tag;           // the caller's id of the request (the prediction log's key); may be empty
  DeadlineIndex::iterator deadline_it;  // valid while in_deadlines (guarded by batcher mu_)
  bool in_deadlines = false;

  std::mutex mu;
  std::condition_variable cv;
  RequestState state = RequestState::kQueued;  // guarded by mu (kQueued also read under batcher mu_)
  std::shared_ptr<const BatchOutput> output;   // kDone
  int64_t row_offset = 0;                      // this request's first row in output
  ErrorCode error_code = ErrorCode::kInternal; // kFailed
  std::string error_message;
  int64_t queue_ns = 0;                        // enqueue -> batch start

  bool Finished() const { return state == RequestState::kDone || state == RequestState::kFailed ||
                                 state == RequestState::kCancelled; }
};

struct BatcherStats {
  int64_t requests = 0;   // accepted
  int64_t rows = 0;       // accepted rows
  int64_t batches = 0;
  int64_t completed = 0;  // requests that got a result
  int64_t rejected = 0;   // refused at submit (queue full, shutting down)
  int64_t timed_out = 0;
  int64_t failed = 0;     // failed in execution, or dropped by Shutdown(drain=false)
  int64_t cancelled = 0;
  int64_t queued = 0;     // now
  std::vector<int64_t> batch_sizes;  // batch_sizes[k] = batches of k rows
  // Per request that reached a batch (completed, or failed in execution): enqueue -> batch start,
  // and enqueue -> result published (the engine's end-to-end latency).
  LatencyHistogram queue;
  LatencyHistogram request;
  // Per batch: gathering + normalizing its rows, and the backend call.
  LatencyHistogram normalize;
  LatencyHistogram compute;
  // Backends with per-instance executors (GPU): how many, and their counters summed.
  int32_t executors = 0;
  ExecutorStats executor;
};

class DynamicBatcher {
 public:
  // Starts config.instance_count workers. Throws kInvalidInput for a bad config.
  DynamicBatcher(std::shared_ptr<const FeaturePlan> plan, std::unique_ptr<Backend> backend,
                 BatcherConfig config);
  ~DynamicBatcher();  // Shutdown(false)
  DynamicBatcher(const DynamicBatcher&) = delete;
  DynamicBatcher& operator=(const DynamicBatcher&) = delete;

  // Copies rows * f_in floats from x (row-major) into a new queued request.
  // @param priority    0 = default level, else 1..priority_levels (1 highest)
  // @param timeout_us  < 0: the default timeout; 0: none
  // @param tag         the caller's request id, logged with the outputs when the prediction
  //                    log is on (empty: not logged)
  // Throws kInvalidInput (rows out of range, bad priority), kQueueFull, kUnavailable (shut down).
  // @param wake_workers  false: the caller runs the queue itself soon (RunReady), so no worker
  //                      is woken for this request
  std::shared_ptr<Request> Submit(const float* x, int64_t rows, int32_t priority,
                                  int64_t timeout_us, bool notify_queue, std::string tag = {},
                                  bool wake_workers = true);

  // Inline execution: runs on the calling thread the batches a worker would cut now (at most
  // max_batches), exactly as a worker runs them (normalize, execute, record, publish). Returns
  // how many ran; when that is max_batches the caller must call again soon for what is still
  // queued (no worker is woken for it). Returns -1 when it ran none and left the queue to the
  // workers (woken); whenever it stops short of max_batches, what is left goes to them: a batch
  // cannot be cut yet (max_queue_delay_us, the hold hook), another thread is running inline,
  // the time an inline batch takes (EWMA over recent inline batches, decaying while refused)
  // is above max_compute_ns, the batcher preserves ordering, or the backend normalizes on a
  // device. A thread that can run the backend (for Python backends: a
  // Python thread holding the GIL) calls it; made for an event loop running tiny models, where
  // handing each batch to a worker thread costs more than computing it.
  int64_t RunReady(int64_t max_batches, int64_t max_compute_ns);

  // Removes a still-queued request (state kCancelled; nothing is published for it).
  // Returns false when it already left the queue.
  bool Cancel(uint64_t id);

  // Blocks until the request finishes or timeout passes; returns whether it finished.
  static bool Wait(Request& request, std::chrono::nanoseconds timeout);

  // Requests submitted with notify_queue that finished since the last call. Resets the eventfd.
  std::vector<std::shared_ptr<Request>> DrainCompleted();
  int completion_fd() const { return event_fd_; }

  // Test hook: form no batch until `min_queued` requests are queued (one-shot; 0 releases).
  void HoldUntilQueued(int64_t min_queued);

  // Stops accepting. drain: queued requests still run; else they fail with kUnavailable.
  // Joins the workers; idempotent; never hangs on the queue (in-flight batches finish).
  void Shutdown(bool drain);

  BatcherStats Stats() const;
  const BatcherConfig& config() const { return config_; }
  const FeaturePlan& plan() const { return *plan_; }
  const Backend& backend() const { return *backend_; }
  // Monitoring, recorded per executed batch before its results are published (both off until
  // configured): a uniform sample of the rows with the prediction histogram, and the log of
  // tagged requests' outputs.
  RowSampler& sampler() { return sampler_; }
  PredictionLog& prediction_log() { return prediction_log_; }
  PredictionExport& prediction_export() { return prediction_export_; }

 private:
  void WorkerLoop(RawBatchExecutor* executor);
  // With mu_ held: fails queued requests whose deadline passed; returns the next deadline.
  Clock::time_point ExpireLocked(Clock::time_point now);
  // With mu_ held: decides whether a batch can be cut now; fills `rows` with its row count, or
  // sets `wake` to when to look again.
  bool ShouldCutLocked(Clock::time_point now, int64_t* rows, Clock::time_point* wake);
  void TakeBatchLocked(int64_t rows, std::vector<std::shared_ptr<Request>>* batch);
  void ProcessBatch(std::vector<std::shared_ptr<Request>>& batch, uint64_t seq,
                    std::vector<float>* buffer, RawBatchExecutor* executor);
  // Marks finished and notifies (cv and/or completion queue). The request's mu must not be held.
  void Publish(const std::vector<std::shared_ptr<Request>>& finished);
  // With mu_ held: takes a queued request out of the queue bookkeeping and marks it failed.
  void FailQueuedLocked(const std::shared_ptr<Request>& r, ErrorCode code, const std::string& msg);
  void UnindexLocked(Request& r);

  const std::shared_ptr<const FeaturePlan> plan_;
  const std::unique_ptr<Backend> backend_;
  const BatcherConfig config_;
  RowSampler sampler_;
  PredictionLog prediction_log_;
  PredictionExport prediction_export_;
  // One per instance for backends that normalize themselves (else empty); destroyed after the
  // workers were joined.
  std::vector<std::unique_ptr<RawBatchExecutor>> executors_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::deque<std::shared_ptr<Request>>> queues_;  // per level; may hold finished
                                                                // (cancelled/expired) entries
  DeadlineIndex deadlines_;  // queued requests with a deadline
  int64_t queued_requests_ = 0;
  int64_t queued_rows_ = 0;   // rows of the queued requests
  int32_t idle_workers_ = 0;  // workers blocked with nothing to wait for but a new request
  std::mutex inline_mu_;  // one inline runner at a time; guards the two below
  std::vector<float> inline_buffer_;
  int64_t inline_ewma_ns_ = 0;  // time an inline batch takes (normalize, execute, publish)
  int64_t hold_until_queued_ = 0;
  bool stopping_ = false;
  bool drain_ = true;
  uint64_t next_id_ = 1;
  uint64_t next_batch_seq_ = 0;
  std::mutex join_mu_;
  std::vector<std::thread> workers_;  // guarded by join_mu_ after construction

  // preserve_ordering: batches publish in formation order.
  std::mutex order_mu_;
  std::condition_variable order_cv_;
  uint64_t next_publish_seq_ = 0;

  std::mutex cq_mu_;
  std::vector<std::shared_ptr<Request>> completed_;
  int event_fd_ = -1;

  mutable std::mutex stats_mu_;
  BatcherStats stats_;
};

}  // namespace mlserve
