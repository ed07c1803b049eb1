-- PLACEHOLDER scaling query (issue 26): the jobs of one worker group's models waiting or rendering.
-- KEDA's PostgreSQL scaler runs it every pollingInterval and asks for ceil(result / targetQueryValue)
-- workers (0 when it is 0). Running jobs count so that a group is not scaled away mid-render.
-- It is to be replaced by the backlog in estimated GPU-seconds over the target drain time
-- (the section on the scaling signal in docs/operations.md).
-- Kustomize copies this text into each ScaledObject and puts the group's comma-separated models
-- (its farm.example.com/models annotation) in place of MODELS, inside the dollar quotes named
-- models: keep that one pair of quotes, and write no other.
SELECT count(*) FROM jobs WHERE state IN ('queued', 'running') AND model = ANY(string_to_array($models$MODELS$models$, ','))
