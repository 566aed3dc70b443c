"""demo: a deterministic simulated platform and the feed that sends its metrics to realtime.

`simulation` generates the series (pure, no I/O) together with the ground truth of the incidents it
injects; `feed` backfills recent history and then streams live points through
RealtimeService.IngestMetrics, so a newcomer's first query returns real-looking curves.
"""
