-- Registry objects owned by a Kubernetes custom resource (issue 15): the controller creates
-- them, and the REST API refuses to change or delete them (409 naming the resource).
CREATE TABLE k8s_owners (
    object_kind TEXT NOT NULL,
    object_id TEXT NOT NULL,
    cr_kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    uid TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (object_kind, object_id),
    UNIQUE (cr_kind, namespace, name)
);
