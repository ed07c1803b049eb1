-- The scaling signal (issue 26): the backlog of one worker group's models in estimated GPU-seconds,
-- the jobs queued in an active batch (a paused batch waits for no worker) or rendering, each at
-- jobs.cost_ms (the farm's estimate from recorded timings, the measured time once settled). A job
-- without a cost yet counts at the farm's default: 1 s for 512x512 at 4 steps, scaled by pixels and
-- steps (farm.fleet.costs.default_image_ms). `farm fleet backlog` reports the same numbers.
-- KEDA's PostgreSQL scaler runs it every pollingInterval and asks for ceil(result / targetQueryValue)
-- workers, 0 when it is 0: with targetQueryValue the target drain time in seconds, that is the
-- count `farm fleet desired --drain` gives. Rendering jobs count, so a group is not scaled away
-- mid-render. Kustomize copies this text into each ScaledObject and puts the group's comma-separated
-- models (its farm.example.com/models annotation) in place of MODELS, inside the dollar quotes named
-- models: keep that one pair of quotes, and write no other.
SELECT COALESCE(SUM(COALESCE(j.cost_ms, 1000.0 * j.width * j.height / 262144.0 * GREATEST(j.steps, 1) / 4.0)), 0) / 1000.0
FROM jobs j JOIN batches b ON b.id = j.batch_id
WHERE j.model = ANY(string_to_array($models$MODELS$models$, ','))
  AND (j.state = 'running' OR (j.state = 'queued' AND b.state = 'active'))
