//! Tests of the control plane over the fake backend: real SQLite and a real image store in a
//! temporary directory, no root, no containers, paused tokio time (a 15-minute idle timeout or
//! a 1-hour task passes in microseconds).

use std::sync::Arc;
use std::time::Duration;

use wharf_api::jobs::{ExecutionTemplate, Job, RunJobRequest, TaskTemplate};
use wharf_api::names::Parent;
use wharf_api::{Code, Container, EnvVar, Operation, RevisionScaling, RevisionTemplate, Service, TrafficTarget};
use wharf_image::Resolver;
use wharf_image::content::ImageStore;
use wharf_image::digest::Digest;
use wharf_router::RoutingTable;
use wharf_store::Store;

use crate::backend::fake::{Behaviour, FakeBackend};
use crate::backend::{LaunchSpec, Owner};
use crate::paging::PageRequest;
use crate::services::store::{self, RevisionState};
use crate::{ControlError, ControlPlane, Settings};

const IMAGE: &str = "127.0.0.1:5000/hello:v1";
const IDLE: Duration = Duration::from_secs(900);

/// A control plane on a temporary data directory with one image, `hello:v1`, in its store.
struct Harness {
    control: ControlPlane,
    backend: FakeBackend,
    table: Arc<RoutingTable>,
    db: Store,
    resolver: Resolver,
    dir: tempfile::TempDir,
}

fn parent() -> Parent {
    Parent { project: "p".into(), location: "l".into() }
}

fn settings() -> Settings {
    Settings {
        domain: "wharf.test".into(),
        ingress_port: 8080,
        idle_timeout: IDLE,
        queue_timeout: Duration::from_secs(10),
        vpc_networks: vec!["office".into()],
    }
}

/// Stores a one-layer linux/amd64 image as `hello:v1` (the layer is never unpacked here).
fn store_image(images: &ImageStore) {
    let put = |bytes: &[u8]| {
        let digest = Digest::of(bytes);
        images.blobs().put(bytes, &digest).unwrap();
        images.link_blob("hello", &digest).unwrap();
        (digest, bytes.len())
    };
    let (layer, layer_size) = put(b"not really a tarball");
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/app"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.as_str()]}
    });
    let (config, config_size) = put(config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.as_str(), "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer.as_str(), "size": layer_size}]
    });
    images
        .put_manifest(
            "hello",
            "v1",
            Some("application/vnd.oci.image.manifest.v1+json"),
            manifest.to_string().as_bytes(),
        )
        .unwrap();
}

impl Harness {
    async fn new(backend: FakeBackend) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let db = Store::open(&dir.path().join("state.db")).unwrap();
        let images = ImageStore::open(dir.path(), db.clone()).unwrap();
        store_image(&images);
        let snapshots = Arc::new(
            wharf_image::snapshot::SnapshotStore::open(&dir.path().join("snapshots"), images.blobs().clone()).unwrap(),
        );
        let remote = Arc::new(wharf_image::remote::RemoteRegistry::new(None));
        let resolver = Resolver::new(images, snapshots, remote, vec!["127.0.0.1:5000".into()]);
        let table = Arc::new(RoutingTable::default());
        let control =
            ControlPlane::open(db.clone(), resolver.clone(), Arc::new(backend.clone()), table.clone(), settings())
                .await
                .unwrap();
        Harness { control, backend, table, db, resolver, dir }
    }

    /// Stops this control plane and opens a new one on the same state, as a server restart.
    async fn restart(self) -> Harness {
        self.control.shutdown().await;
        let table = Arc::new(RoutingTable::default());
        let control = ControlPlane::open(
            self.db.clone(),
            self.resolver.clone(),
            Arc::new(self.backend.clone()),
            table.clone(),
            settings(),
        )
        .await
        .unwrap();
        Harness { control, table, ..self }
    }

    async fn done(&self, op: Operation) -> Operation {
        let op = self.control.wait_operation(&op.name, Duration::from_secs(3600)).await.unwrap();
        assert!(op.done, "operation {} did not finish", op.name);
        op
    }

    async fn deploy(&self, name: &str, service: Service) -> Operation {
        let op = self.control.create_service(&parent(), name, service, false).await.unwrap();
        self.done(op).await
    }

    fn host(&self, service: &str) -> String {
        wharf_api::names::service_host(service, &parent(), "wharf.test")
    }

    /// The revisions serving `service`'s host, with their percents.
    fn routed(&self, service: &str) -> Vec<(String, u32)> {
        let route = self.table.lookup(&self.host(service));
        route.map(|r| r.targets.iter().map(|(pool, pct)| (pool.revision.clone(), *pct)).collect()).unwrap_or_default()
    }
}

fn container(env: &[(&str, &str)]) -> Container {
    Container {
        image: IMAGE.into(),
        env: env
            .iter()
            .map(|(k, v)| EnvVar { name: (*k).into(), value: Some((*v).into()), value_source: None })
            .collect(),
        ..Container::default()
    }
}

fn service(env: &[(&str, &str)]) -> Service {
    Service {
        template: RevisionTemplate { containers: vec![container(env)], ..Default::default() },
        ..Default::default()
    }
}

fn serving_behaviour() -> FakeBackend {
    FakeBackend::default()
}

#[tokio::test(start_paused = true)]
async fn a_deploy_proves_its_revision_with_the_stored_template_and_routes_to_it() {
    let h = Harness::new(serving_behaviour()).await;
    let op = h.deploy("hello", service(&[("GREETING", "hi")])).await;
    assert_eq!(op.error, None);
    let svc = h.control.get_service(&parent(), "hello").unwrap();
    let revision = svc.latest_ready_revision.rsplit('/').next().unwrap().to_owned();
    assert_eq!(svc.latest_created_revision, svc.latest_ready_revision);
    assert_eq!(h.routed("hello"), vec![(revision.clone(), 100)]);

    let view = h.backend.view();
    assert_eq!(view.launches.len(), 1, "one instance proves the revision");
    let launch: &LaunchSpec = &view.launches[0];
    assert_eq!(launch.template.env, vec![("GREETING".to_owned(), "hi".to_owned())]);
    assert_eq!(launch.template.port, 8080);
    assert!(matches!(&launch.owner, Owner::Service { revision: r, .. } if *r == revision));
    // What was launched is what was stored with the revision, not a re-validation.
    let row = store::get_revision(&h.db, &parent(), &revision).unwrap().unwrap();
    assert_eq!(row.config.instance, launch.template);
    assert_eq!(row.state, RevisionState::Ready);
}

#[tokio::test(start_paused = true)]
async fn a_revision_that_cannot_start_fails_its_operation_with_the_reason() {
    let backend = FakeBackend::new(|_| Behaviour::FailStart {
        start_delay: Duration::from_millis(50),
        message: "the container exited with code 3 before listening".into(),
    });
    let h = Harness::new(backend).await;
    let op = h.deploy("broken", service(&[])).await;
    let error = op.error.expect("the operation fails");
    assert_eq!(error.code, Code::FailedPrecondition.number());
    assert!(error.message.contains("exited with code 3 before listening"), "{}", error.message);
    let svc = h.control.get_service(&parent(), "broken").unwrap();
    assert_eq!(svc.latest_ready_revision, "");
    assert_eq!(h.routed("broken"), vec![]);
}

/// When the backend has no room for another instance, a request that needs one gets a 429
/// with the backend's reason (not the 503 of a revision that cannot start), and the revision
/// stays ready.
#[tokio::test(start_paused = true)]
async fn a_request_needing_an_instance_the_backend_has_no_room_for_gets_429_with_the_reason() {
    const REASON: &str = "wharf: no capacity: instances use 256 MiB of 256 MiB (--instance-memory-limit); \
                          this instance needs 128 MiB";
    let starts = std::sync::atomic::AtomicUsize::new(0);
    let backend = FakeBackend::new(move |_| {
        if starts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            Behaviour::Serve { start_delay: Duration::ZERO }
        } else {
            Behaviour::NoCapacity { message: REASON.into() }
        }
    });
    let h = Harness::new(backend).await;
    let mut svc = service(&[]);
    svc.template.max_instance_request_concurrency = 1;
    let op = h.deploy("full", svc).await;
    assert_eq!(op.error, None);
    let revision = h.routed("full")[0].0.clone();
    let pool = h.control.pool("p", "l", &revision).unwrap();
    let busy = pool.acquire().await.expect("the deploy's instance serves");
    let refused = pool.acquire().await.expect_err("a second instance does not fit");
    assert_eq!(refused.status().as_u16(), 429);
    assert_eq!(refused.to_string(), format!("no capacity for another instance: {REASON}"));
    assert_eq!(h.backend.view().launches.len(), 2);
    let ready = h.control.get_service(&parent(), "full").unwrap().latest_ready_revision;
    assert!(ready.ends_with(&format!("/{revision}")), "{ready}");
    drop(busy);
}

#[tokio::test(start_paused = true)]
async fn a_dry_run_stores_nothing_and_starts_nothing() {
    let h = Harness::new(serving_behaviour()).await;
    let op = h.control.create_service(&parent(), "dry", service(&[]), true).await.unwrap();
    assert_eq!((op.name.as_str(), op.done), ("", true));
    assert!(matches!(h.control.get_service(&parent(), "dry"), Err(ControlError::NotFound(_))));
    assert_eq!(h.backend.view().launches.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn bad_input_is_refused_by_name_before_anything_is_written() {
    let h = Harness::new(serving_behaviour()).await;
    let reserved = h.control.create_service(&parent(), "bad", service(&[("PORT", "1")]), false).await;
    assert!(
        matches!(&reserved, Err(ControlError::InvalidArgument(m)) if m.contains("PORT is reserved")),
        "{reserved:?}"
    );
    let mut two = service(&[]);
    two.template.containers.push(container(&[]));
    let sidecar = h.control.create_service(&parent(), "bad", two, false).await;
    assert!(matches!(&sidecar, Err(ControlError::InvalidArgument(m)) if m.contains("sidecar")), "{sidecar:?}");
    let mut missing = service(&[]);
    missing.template.containers[0].image = "127.0.0.1:5000/nothere:v1".into();
    let unresolved = h.control.create_service(&parent(), "bad", missing, false).await;
    assert!(matches!(&unresolved, Err(ControlError::InvalidArgument(m)) if m.contains("could not be resolved")));
    assert!(matches!(h.control.get_service(&parent(), "bad"), Err(ControlError::NotFound(_))));
    assert_eq!(h.backend.view().launches.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_update_switches_traffic_to_the_new_revision_and_the_old_one_scales_to_zero() {
    let h = Harness::new(serving_behaviour()).await;
    h.deploy("hello", service(&[("V", "1")])).await;
    let first = h.routed("hello")[0].0.clone();
    let op = h.control.update_service(&parent(), "hello", service(&[("V", "2")]), None, false, false).await.unwrap();
    assert_eq!(h.done(op).await.error, None);
    let second = h.routed("hello")[0].0.clone();
    assert_ne!(first, second);
    assert_eq!(h.routed("hello"), vec![(second.clone(), 100)]);
    // The old revision's pool no longer serves: after the idle timeout its instance stops.
    let old = h.control.pool("p", "l", &first).unwrap();
    assert_eq!(old.config().scaling.min_instances, 0);
    tokio::time::sleep(IDLE + Duration::from_secs(120)).await;
    assert_eq!(old.stats().ready, 0);
    assert_eq!(h.control.pool("p", "l", &second).unwrap().config().scaling.min_instances, 0);
}

#[tokio::test(start_paused = true)]
async fn an_update_with_the_same_template_makes_no_revision() {
    let h = Harness::new(serving_behaviour()).await;
    h.deploy("hello", service(&[("V", "1")])).await;
    let op = h.control.update_service(&parent(), "hello", service(&[("V", "1")]), None, false, false).await.unwrap();
    assert!(op.done);
    assert_eq!(h.control.list_revisions(&parent(), "hello", &PageRequest::default()).unwrap().revisions.len(), 1);
    assert_eq!(h.backend.view().launches.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_template_spelling_out_the_defaults_is_the_same_revision() {
    // What an exported Knative YAML sends back: defaults written out, traffic explicit.
    let h = Harness::new(serving_behaviour()).await;
    h.deploy("hello", service(&[("V", "1")])).await;
    let before = h.control.get_service(&parent(), "hello").unwrap();
    let mut explicit = service(&[("V", "1")]);
    explicit.template.max_instance_request_concurrency = 80;
    explicit.template.timeout = Some("300s".into());
    let c = &mut explicit.template.containers[0];
    c.ports = vec![wharf_api::ContainerPort { name: "http1".into(), container_port: 8080 }];
    c.resources = Some(wharf_api::ResourceRequirements {
        limits: [("cpu".into(), "1000m".into()), ("memory".into(), "512Mi".into())].into(),
        ..Default::default()
    });
    explicit.traffic =
        vec![TrafficTarget { kind: Some(wharf_api::TRAFFIC_LATEST.into()), percent: 100, ..Default::default() }];
    let op = h.control.update_service(&parent(), "hello", explicit.clone(), None, false, false).await.unwrap();
    assert!(op.done, "nothing changed, so nothing to do: {op:?}");
    let after = h.control.get_service(&parent(), "hello").unwrap();
    assert_eq!(
        (after.generation, &after.latest_created_revision),
        (before.generation, &before.latest_created_revision)
    );
    // A real change in the same spelling still makes a revision.
    explicit.template.max_instance_request_concurrency = 10;
    let op = h.control.update_service(&parent(), "hello", explicit, None, false, false).await.unwrap();
    h.done(op).await;
    assert_eq!(h.control.list_revisions(&parent(), "hello", &PageRequest::default()).unwrap().revisions.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn hosts_carry_the_project_hash_and_services_from_before_keep_their_old_host() {
    let h = Harness::new(serving_behaviour()).await;
    h.deploy("hello", service(&[])).await;
    let svc = h.control.get_service(&parent(), "hello").unwrap();
    assert!(svc.uri.starts_with(&format!("http://{}:", h.host("hello"))), "{}", svc.uri);
    assert!(h.table.lookup("hello-p.wharf.test").is_none(), "a new service has only the hashed host");
    // What migration 7 marks on services created before the hashed hosts.
    h.db.write(|tx| tx.execute("UPDATE services SET legacy_host = 1", []).map_err(ControlError::from)).unwrap();
    let h = h.restart().await;
    assert!(h.table.lookup("hello-p.wharf.test").is_some(), "the old host still routes");
    assert!(h.table.lookup(&h.host("hello")).is_some());
    let urls = h.control.get_service(&parent(), "hello").unwrap().urls;
    assert_eq!(urls.len(), 2, "{urls:?}");
    let op = h.control.delete_service(&parent(), "hello", "", false).await.unwrap();
    h.done(op).await;
    assert!(h.table.lookup("hello-p.wharf.test").is_none(), "deleting unroutes both hosts");
}

#[tokio::test(start_paused = true)]
async fn idle_instances_scale_to_zero_and_a_request_brings_one_back() {
    let h = Harness::new(serving_behaviour()).await;
    h.deploy("hello", service(&[])).await;
    let revision = h.routed("hello")[0].0.clone();
    let pool = h.control.pool("p", "l", &revision).unwrap();
    assert_eq!(pool.stats().ready, 1);
    tokio::time::sleep(IDLE + Duration::from_secs(120)).await;
    assert_eq!(pool.stats().ready, 0, "scaled to zero after the idle timeout");
    assert_eq!(h.backend.view().running.len(), 0, "the backend stopped the instance");
    // A request from zero: it waits in the queue while an instance starts.
    let lease = pool.acquire().await.expect("a request gets an instance");
    assert_eq!(h.backend.view().started, 2);
    drop(lease);
}

#[tokio::test(start_paused = true)]
async fn min_instances_are_kept_warm() {
    let h = Harness::new(serving_behaviour()).await;
    let mut svc = service(&[]);
    svc.template.scaling = Some(RevisionScaling { min_instance_count: 2, max_instance_count: 5 });
    h.deploy("warm", svc).await;
    let revision = h.routed("warm")[0].0.clone();
    let pool = h.control.pool("p", "l", &revision).unwrap();
    h.backend.wait_for(|v| v.running.len() == 2).await;
    tokio::time::sleep(IDLE * 2).await;
    assert_eq!(pool.stats().ready, 2);
    assert_eq!(h.backend.view().running.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_instance_that_crashes_is_replaced_on_the_next_request() {
    let h = Harness::new(serving_behaviour()).await;
    h.deploy("hello", service(&[])).await;
    let revision = h.routed("hello")[0].0.clone();
    let pool = h.control.pool("p", "l", &revision).unwrap();
    let crashed = h.backend.view().running[0].clone();
    h.backend.exit(&crashed, 139);
    let lease = pool.acquire().await.expect("a new instance serves");
    assert_ne!(lease.upstream().id(), crashed);
    assert_eq!(h.backend.view().started, 2);
}

#[tokio::test(start_paused = true)]
async fn deleting_a_service_unroutes_it_and_stops_its_instances() {
    let h = Harness::new(serving_behaviour()).await;
    h.deploy("hello", service(&[])).await;
    let op = h.control.delete_service(&parent(), "hello", "", false).await.unwrap();
    h.done(op).await;
    assert_eq!(h.routed("hello"), vec![]);
    assert_eq!(h.backend.view().running.len(), 0);
    assert!(matches!(h.control.get_service(&parent(), "hello"), Err(ControlError::NotFound(_))));
}

#[tokio::test(start_paused = true)]
async fn traffic_splits_and_tags_route_to_the_named_revisions() {
    let h = Harness::new(serving_behaviour()).await;
    h.deploy("hello", service(&[("V", "1")])).await;
    let first = h.routed("hello")[0].0.clone();
    let op = h.control.update_service(&parent(), "hello", service(&[("V", "2")]), None, false, false).await.unwrap();
    h.done(op).await;
    let second = h.routed("hello")[0].0.clone();
    let mut split = service(&[("V", "2")]);
    split.traffic = vec![
        TrafficTarget {
            revision: first.clone(),
            percent: 90,
            kind: Some(wharf_api::TRAFFIC_REVISION.into()),
            ..Default::default()
        },
        TrafficTarget {
            revision: second.clone(),
            percent: 10,
            tag: "canary".into(),
            kind: Some(wharf_api::TRAFFIC_REVISION.into()),
        },
    ];
    let op =
        h.control.update_service(&parent(), "hello", split, Some(vec!["traffic".into()]), false, false).await.unwrap();
    h.done(op).await;
    assert_eq!(h.routed("hello"), vec![(first, 90), (second.clone(), 10)]);
    let tag = h.table.lookup(&format!("canary---{}", h.host("hello"))).unwrap();
    assert_eq!(tag.targets.iter().map(|(p, pct)| (p.revision.clone(), *pct)).collect::<Vec<_>>(), vec![(second, 100)]);
}

#[tokio::test(start_paused = true)]
async fn a_restart_restores_routes_without_new_revisions() {
    let h = Harness::new(serving_behaviour()).await;
    h.deploy("hello", service(&[])).await;
    let before = h.routed("hello");
    let h = h.restart().await;
    assert_eq!(h.routed("hello"), before);
    assert_eq!(h.control.list_revisions(&parent(), "hello", &PageRequest::default()).unwrap().revisions.len(), 1);
    let _ = &h.dir;
}

// ---- jobs ----------------------------------------------------------------------------------

fn job(tasks: i32, parallelism: i32, retries: i32, timeout: &str) -> Job {
    Job {
        template: ExecutionTemplate {
            task_count: tasks,
            parallelism,
            template: TaskTemplate {
                containers: vec![container(&[])],
                timeout: Some(timeout.into()),
                max_retries: Some(retries),
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

fn task_of(spec: &LaunchSpec) -> (u32, u32) {
    match &spec.owner {
        Owner::Task { index, attempt, .. } => (*index, *attempt),
        other => panic!("not a task: {other:?}"),
    }
}

impl Harness {
    async fn run(&self, job_name: &str, body: Job) -> (Operation, wharf_api::jobs::Execution) {
        self.control.create_job(&parent(), job_name, body, false).await.unwrap();
        let op = self.control.run_job(&parent(), job_name, RunJobRequest::default()).await.unwrap();
        let op = self.done(op).await;
        let name = self.control.list_executions(&parent(), job_name, &PageRequest::default()).unwrap().executions[0]
            .name
            .clone();
        let id = name.rsplit('/').next().unwrap();
        (op, self.control.get_execution(&parent(), job_name, id).unwrap())
    }
}

#[tokio::test(start_paused = true)]
async fn an_execution_runs_every_task_within_its_parallelism() {
    let backend = FakeBackend::new(|_| Behaviour::Exit { run_for: Duration::from_secs(30), code: 0 });
    let h = Harness::new(backend).await;
    let (op, execution) = h.run("batch", job(6, 2, 0, "600s")).await;
    assert_eq!(op.error, None);
    assert_eq!((execution.succeeded_count, execution.failed_count, execution.retried_count), (6, 0, 0));
    let view = h.backend.view();
    assert_eq!(view.peak_running, 2, "never more than parallelism tasks at once");
    let mut indexes: Vec<u32> = view.launches.iter().map(|l| task_of(l).0).collect();
    indexes.sort_unstable();
    assert_eq!(indexes, vec![0, 1, 2, 3, 4, 5]);
}

#[tokio::test(start_paused = true)]
async fn a_failing_task_is_retried_with_the_next_attempt_number() {
    // Task 0 fails on its first two attempts, then succeeds.
    let backend = FakeBackend::new(|spec| {
        let (_, attempt) = task_of(spec);
        Behaviour::Exit { run_for: Duration::from_secs(1), code: if attempt < 2 { 1 } else { 0 } }
    });
    let h = Harness::new(backend).await;
    let (op, execution) = h.run("flaky", job(1, 1, 3, "60s")).await;
    assert_eq!(op.error, None);
    assert_eq!((execution.succeeded_count, execution.retried_count), (1, 2));
    let attempts: Vec<u32> = h.backend.view().launches.iter().map(|l| task_of(l).1).collect();
    assert_eq!(attempts, vec![0, 1, 2]);
    let tasks = h
        .control
        .list_tasks(&parent(), "flaky", execution.name.rsplit('/').next().unwrap(), &PageRequest::default())
        .unwrap();
    assert_eq!(tasks.tasks[0].retried, 2);
}

/// A task the machine has no room for fails that attempt with the reason and is retried; with
/// no retries left the execution fails saying why.
#[tokio::test(start_paused = true)]
async fn a_task_with_no_capacity_fails_its_attempt_with_the_reason_and_is_retried() {
    const REASON: &str = "wharf: no capacity: instances use 1 GiB of 1 GiB (--instance-memory-limit); \
                          this instance needs 512 MiB";
    let backend = FakeBackend::new(|spec| match task_of(spec).1 {
        0 => Behaviour::NoCapacity { message: REASON.into() },
        _ => Behaviour::Exit { run_for: Duration::from_secs(1), code: 0 },
    });
    let h = Harness::new(backend).await;
    let (op, execution) = h.run("later", job(1, 1, 1, "60s")).await;
    assert_eq!(op.error, None);
    assert_eq!((execution.succeeded_count, execution.retried_count), (1, 1));

    let always_full = FakeBackend::new(|_| Behaviour::NoCapacity { message: REASON.into() });
    let h = Harness::new(always_full).await;
    let (op, execution) = h.run("never", job(1, 1, 1, "60s")).await;
    let error = op.error.expect("the execution fails");
    assert!(error.message.contains(REASON), "{}", error.message);
    assert_eq!((execution.failed_count, execution.retried_count), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_task_over_its_timeout_is_stopped_and_counts_as_failed() {
    let backend = FakeBackend::new(|_| Behaviour::Exit { run_for: Duration::from_secs(3600), code: 0 });
    let h = Harness::new(backend).await;
    let (op, execution) = h.run("slow", job(1, 1, 1, "10s")).await;
    let error = op.error.expect("the execution fails");
    assert!(error.message.contains("exceeded its timeout of 10s"), "{}", error.message);
    assert_eq!((execution.failed_count, execution.retried_count), (1, 1));
    let view = h.backend.view();
    assert_eq!(view.launches.len(), 2, "first attempt and one retry");
    assert_eq!(view.stops, 2, "each timed-out attempt is stopped");
    assert!(view.logs.iter().any(|(_, _, m)| m.contains("attempt 0 exceeded its timeout")), "{:?}", view.logs);
    assert_eq!(view.running.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn one_task_failing_for_good_stops_the_others() {
    let backend = FakeBackend::new(|spec| match task_of(spec).0 {
        0 => Behaviour::Exit { run_for: Duration::from_secs(5), code: 2 },
        _ => Behaviour::Exit { run_for: Duration::from_secs(3600), code: 0 },
    });
    let h = Harness::new(backend).await;
    let (op, execution) = h.run("fragile", job(3, 3, 0, "7200s")).await;
    assert!(op.error.is_some());
    assert_eq!((execution.failed_count, execution.cancelled_count, execution.succeeded_count), (1, 2, 0));
    assert_eq!(execution.conditions[0].state, wharf_api::CONDITION_FAILED);
    assert!(execution.conditions[0].message.contains("Task 0 failed after 1 attempt(s)"));
    assert_eq!(h.backend.view().running.len(), 0, "the long tasks were stopped");
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_execution_stops_its_running_tasks() {
    let backend = FakeBackend::new(|_| Behaviour::Exit { run_for: Duration::from_secs(3600), code: 0 });
    let h = Harness::new(backend).await;
    h.control.create_job(&parent(), "long", job(2, 2, 0, "7200s"), false).await.unwrap();
    let op = h.control.run_job(&parent(), "long", RunJobRequest::default()).await.unwrap();
    h.backend.wait_for(|v| v.running.len() == 2).await;
    let id = h.control.list_executions(&parent(), "long", &PageRequest::default()).unwrap().executions[0]
        .name
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    h.control.cancel_execution(&parent(), "long", &id, &Default::default()).unwrap();
    let op = h.done(op).await;
    assert!(op.error.is_some());
    let execution = h.control.get_execution(&parent(), "long", &id).unwrap();
    assert_eq!(execution.cancelled_count, 2);
    assert_eq!(execution.conditions[0].execution_reason.as_deref(), Some("CANCELLED"));
    assert_eq!(h.backend.view().running.len(), 0);
    // Cancelling again: it is no longer running.
    assert!(matches!(
        h.control.cancel_execution(&parent(), "long", &id, &Default::default()),
        Err(ControlError::FailedPrecondition(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn an_execution_interrupted_by_a_restart_resumes_and_counts_the_attempt() {
    let backend = FakeBackend::new(|_| Behaviour::Exit { run_for: Duration::from_secs(60), code: 0 });
    let h = Harness::new(backend).await;
    h.control.create_job(&parent(), "resume", job(1, 1, 3, "600s"), false).await.unwrap();
    let op = h.control.run_job(&parent(), "resume", RunJobRequest::default()).await.unwrap();
    h.backend.wait_for(|v| v.running.len() == 1).await;
    let h = h.restart().await;
    // The operation `run` answered with completes when the resumed execution does.
    let op = h.done(op).await;
    assert_eq!(op.error, None);
    let id = h.control.list_executions(&parent(), "resume", &PageRequest::default()).unwrap().executions[0]
        .name
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let execution = h.control.get_execution(&parent(), "resume", &id).unwrap();
    assert!(!execution.reconciling);
    assert_eq!((execution.succeeded_count, execution.retried_count), (1, 1));
    let attempts: Vec<u32> = h.backend.view().launches.iter().map(|l| task_of(l).1).collect();
    assert_eq!(attempts, vec![0, 1], "the interrupted attempt counts; the retry is attempt 1");
}

#[tokio::test(start_paused = true)]
async fn job_templates_are_checked_by_name() {
    let h = Harness::new(FakeBackend::default()).await;
    let mut probed = job(1, 1, 0, "60s");
    probed.template.template.containers[0].startup_probe = Some(wharf_api::Probe::default());
    let err = h.control.create_job(&parent(), "probed", probed, false).await.unwrap_err();
    assert!(matches!(&err, ControlError::InvalidArgument(m) if m.contains("probes")), "{err:?}");
    let err = h.control.create_job(&parent(), "many", job(10_001, 1, 0, "60s"), false).await.unwrap_err();
    assert!(matches!(&err, ControlError::InvalidArgument(m) if m.contains("task count 10001")), "{err:?}");
    let err = h.control.create_job(&parent(), "long", job(1, 1, 0, "700000s"), false).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[test]
fn store_failures_keep_their_source() {
    let err = ControlError::from(wharf_store::rusqlite::Error::InvalidQuery);
    assert_eq!(err.code(), Code::Internal);
    let source = std::error::Error::source(&err).expect("the store error is kept");
    assert!(std::error::Error::source(source).is_some(), "and so is rusqlite's");
}

/// A revision whose instance takes half an hour to become ready (a stuck readiness probe) does not
/// hold the service's lock: a delete answers before the start ends, the deploy's operation
/// then fails saying why, and the instance the proof started is stopped.
#[tokio::test(start_paused = true)]
async fn a_stuck_readiness_probe_does_not_block_a_delete() {
    let backend = FakeBackend::new(|_| Behaviour::Serve { start_delay: Duration::from_secs(1800) });
    let h = Harness::new(backend).await;
    let deploy = h.control.create_service(&parent(), "stuck", service(&[]), false).await.unwrap();
    h.backend.wait_for(|v| v.launches.len() == 1).await;
    let delete = h.control.delete_service(&parent(), "stuck", "", false).await.unwrap();
    assert_eq!(h.backend.view().started, 0, "the delete waited for the instance to become ready");
    assert_eq!(h.done(delete).await.error, None);
    let deploy = h.done(deploy).await;
    let error = deploy.error.expect("the deploy of a deleted service cannot succeed");
    assert_eq!(error.code, Code::Aborted.number(), "{error:?}");
    assert!(error.message.contains("deleted"), "{}", error.message);
    h.backend.wait_for(|v| v.started == 1 && v.running.is_empty()).await;
    assert_eq!(h.control.get_service(&parent(), "stuck").unwrap_err().code(), Code::NotFound);
}

/// An update planned while a revision is being proven does not wait for the proof either, and
/// both operations complete; the newest revision ends up serving.
#[tokio::test(start_paused = true)]
async fn an_update_does_not_wait_for_a_slow_start() {
    let backend = FakeBackend::new(|spec| match spec.template.env.first() {
        Some((_, v)) if v == "slow" => Behaviour::Serve { start_delay: Duration::from_secs(600) },
        _ => Behaviour::Serve { start_delay: Duration::ZERO },
    });
    let h = Harness::new(backend).await;
    let first = h.control.create_service(&parent(), "busy", service(&[("MODE", "slow")]), false).await.unwrap();
    h.backend.wait_for(|v| v.launches.len() == 1).await;
    let second =
        h.control.update_service(&parent(), "busy", service(&[("MODE", "fast")]), None, false, false).await.unwrap();
    assert_eq!(h.backend.view().started, 0, "the update waited for the slow start");
    assert_eq!(h.done(first).await.error, None);
    assert_eq!(h.done(second).await.error, None);
    let svc = h.control.get_service(&parent(), "busy").unwrap();
    assert_eq!(svc.observed_generation, 2);
    let latest = svc.latest_ready_revision.rsplit('/').next().unwrap().to_owned();
    assert_eq!(h.routed("busy"), vec![(latest, 100)]);
}

/// Deleting a job while its execution runs stops the tasks and still ends the `:run`
/// operation, with the reason.
#[tokio::test(start_paused = true)]
async fn deleting_a_running_job_completes_its_run_operation() {
    let backend = FakeBackend::new(|_| Behaviour::Exit { run_for: Duration::from_secs(3600), code: 0 });
    let h = Harness::new(backend).await;
    h.control.create_job(&parent(), "gone", job(2, 2, 0, "7200s"), false).await.unwrap();
    let run = h.control.run_job(&parent(), "gone", RunJobRequest::default()).await.unwrap();
    h.backend.wait_for(|v| v.running.len() == 2).await;
    h.control.delete_job(&parent(), "gone", "", false).await.unwrap();
    let op = h.done(run).await;
    let error = op.error.expect("a deleted execution did not succeed");
    assert_eq!(error.code, Code::Aborted.number(), "{error:?}");
    h.backend.wait_for(|v| v.running.is_empty()).await;
}

/// Operations a crash left unfinished, that no reconcile or execution takes over, are settled
/// at the next start: a service operation whose service is gone (a committed delete) is done;
/// any other fails with ABORTED and says why.
#[tokio::test(start_paused = true)]
async fn unfinished_operations_nobody_resumes_are_settled_at_start() {
    use crate::operations::OperationBuilder;
    let h = Harness::new(serving_behaviour()).await;
    let gone = Service { name: "projects/p/locations/l/services/gone".into(), ..Service::default() };
    let delete = OperationBuilder::new(&parent(), wharf_api::SERVICE_TYPE, &gone).running();
    let other = OperationBuilder::new(&parent(), "type.googleapis.com/example.Unknown", &gone).running();
    h.db.write(|tx| {
        h.control.inner.operations.insert(tx, &delete)?;
        h.control.inner.operations.insert(tx, &other)
    })
    .unwrap();
    let h = h.restart().await;
    let delete = h.control.get_operation(&delete.name).unwrap();
    assert!(delete.done, "{delete:?}");
    assert_eq!(delete.error, None);
    let other = h.control.get_operation(&other.name).unwrap();
    assert!(other.done, "{other:?}");
    let error = other.error.expect("an operation nobody can finish fails");
    assert_eq!(error.code, Code::Aborted.number());
    assert!(error.message.contains("The server restarted before this operation completed"), "{}", error.message);
}

// ---- usage ---------------------------------------------------------------------------------

/// Usage is metered into the store: a deleted revision's stays counted in its service, a
/// job's task time per execution, and both read the same after a restart.
#[tokio::test(start_paused = true)]
async fn usage_outlives_its_revision_and_a_restart_and_counts_job_task_time() {
    let backend = FakeBackend::new(|spec| match spec.owner {
        Owner::Task { .. } => Behaviour::Exit { run_for: Duration::from_secs(30), code: 0 },
        Owner::Service { .. } => Behaviour::Serve { start_delay: Duration::ZERO },
    });
    let h = Harness::new(backend).await;
    h.deploy("hello", service(&[("V", "1")])).await;
    let first = h.routed("hello")[0].0.clone();
    let pool = h.control.pool("p", "l", &first).unwrap();
    // One request in flight for 2 s (paused time: exactly).
    let lease = pool.acquire().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(lease);
    let usage = h.control.service_usage(&parent(), "hello").unwrap();
    assert_eq!((usage.requests, usage.cpu_throttled.instance_seconds), (1, 2.0), "{usage:?}");
    assert_eq!(usage.cpu_throttled.vcpu_seconds, 2.0, "1 vCPU by default");
    assert_eq!(usage.cpu_throttled.gib_seconds, 1.0, "512 MiB by default");
    assert!(usage.cpu_always_allocated.instance_seconds >= 2.0, "{usage:?}");

    // A new revision takes the traffic; the first is deleted, its usage stays.
    let op = h.control.update_service(&parent(), "hello", service(&[("V", "2")]), None, false, false).await.unwrap();
    assert_eq!(h.done(op).await.error, None);
    let op = h.control.delete_revision(&parent(), "hello", &first, "", false).await.unwrap();
    assert_eq!(h.done(op).await.error, None);
    assert!(h.control.pool("p", "l", &first).is_none(), "the deleted revision's pool is gone");
    let usage = h.control.service_usage(&parent(), "hello").unwrap();
    let deleted = usage.revisions.iter().find(|r| r.revision == first).expect("the deleted revision's usage");
    assert_eq!((deleted.requests, deleted.cpu_throttled.instance_seconds), (1, 2.0));

    // A job: two tasks of 30 s each.
    let (op, execution) = h.run("batch", job(2, 2, 0, "600s")).await;
    assert_eq!(op.error, None);
    let jobs = h.control.job_usage(&parent(), "batch").unwrap();
    assert_eq!(jobs.name, "projects/p/locations/l/jobs/batch");
    assert_eq!(jobs.executions.len(), 1);
    assert_eq!(jobs.executions[0].execution, execution.name.rsplit('/').next().unwrap());
    assert_eq!(jobs.tasks, crate::usage::Billable { instance_seconds: 60.0, vcpu_seconds: 60.0, gib_seconds: 30.0 });

    // A restart: the same figures, read from the store.
    let before = h.control.service_usage(&parent(), "hello").unwrap();
    let h = h.restart().await;
    let after = h.control.service_usage(&parent(), "hello").unwrap();
    assert_eq!((after.requests, after.cpu_throttled.clone()), (before.requests, before.cpu_throttled.clone()));
    assert!(after.cpu_always_allocated.instance_seconds >= before.cpu_always_allocated.instance_seconds);
    assert_eq!(h.control.job_usage(&parent(), "batch").unwrap(), jobs);
    let _ = &h.dir;
}
