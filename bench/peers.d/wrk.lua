-- bench/peers: wrk prints its figures as one JSON line at the end of a run (wrk's done() hook;
-- with no request()/response() hook wrk keeps its fast path).
--
-- The latency percentiles are wrk's own, as `wrk --latency` prints them. Before done() wrk
-- corrects its histogram for coordinated omission (wrk.c's stats_correct): a request that took
-- n >= 2e microseconds, e being a connection's average time per request (duration / (requests /
-- connections)), is also counted at n - e, n - 2e, ... down to above e, standing for the requests
-- that connection would have sent meanwhile. A request stuck for 1 s thus weighs like a thousand
-- when e is 1 ms, and p99 reflects the share of time a client is stuck, not of requests.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
