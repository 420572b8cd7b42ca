//! An in-memory [`InstanceBackend`] for tests: instances are records with a status watch, no
//! process, no root. A test decides how each start goes ([`Behaviour`], per [`LaunchSpec`]),
//! makes instances die, and waits on what the backend saw ([`FakeBackend::wait_for`]). Works
//! with paused tokio time: start delays and task run times are tokio sleeps.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::{
    BackendError, BoxFuture, ExitInfo, InstanceBackend, InstanceHandle, InstanceState, InstanceStats, InstanceStatus,
    LaunchSpec, Owner, Severity, Signal,
};

/// How one start goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Ready after `start_delay`, runs until stopped.
    Serve { start_delay: Duration },
    /// The start fails after `start_delay` with `message`.
    FailStart { start_delay: Duration, message: String },
    /// Runs (a job task) for `run_for`, then exits with `code`.
    Exit { run_for: Duration, code: i32 },
    /// The start is refused at once: no capacity on the machine (`message` says why).
    NoCapacity { message: String },
}

type Decide = dyn Fn(&LaunchSpec) -> Behaviour + Send + Sync;

/// What the fake backend has seen, for assertions.
#[derive(Debug, Default, Clone)]
pub struct FakeView {
    /// Every start asked for, in order.
    pub launches: Vec<LaunchSpec>,
    /// Instances not yet stopped or failed, by id.
    pub running: Vec<String>,
    /// Instances ever started successfully.
    pub started: usize,
    /// Stops asked for.
    pub stops: usize,
    /// Platform log lines: (instance id, severity, message).
    pub logs: Vec<(String, Severity, String)>,
    /// The most instances running at once.
    pub peak_running: usize,
}

#[derive(Clone)]
pub struct FakeBackend {
    inner: Arc<FakeInner>,
}

struct FakeInner {
    decide: Box<Decide>,
    view: Mutex<FakeView>,
    instances: Mutex<HashMap<String, Arc<FakeInstance>>>,
    changed: Notify,
}

impl std::fmt::Debug for FakeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeBackend").field("view", &self.view()).finish_non_exhaustive()
    }
}

impl Default for FakeBackend {
    fn default() -> FakeBackend {
        FakeBackend::new(|_| Behaviour::Serve { start_delay: Duration::ZERO })
    }
}

impl FakeBackend {
    /// A backend whose starts go as `decide` says.
    pub fn new(decide: impl Fn(&LaunchSpec) -> Behaviour + Send + Sync + 'static) -> FakeBackend {
        FakeBackend {
            inner: Arc::new(FakeInner {
                decide: Box::new(decide),
                view: Mutex::default(),
                instances: Mutex::default(),
                changed: Notify::new(),
            }),
        }
    }

    pub fn view(&self) -> FakeView {
        self.inner.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until `condition` holds for what the backend has seen.
    pub async fn wait_for(&self, condition: impl Fn(&FakeView) -> bool) -> FakeView {
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let view = self.view();
            if condition(&view) {
                return view;
            }
            notified.await;
        }
    }

    /// A running instance by id.
    pub fn instance(&self, id: &str) -> Option<Arc<FakeInstance>> {
        self.inner.instances.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    /// Makes a running instance's process exit now with `code` (a crash when not 0).
    pub fn exit(&self, id: &str, code: i32) {
        if let Some(instance) = self.instance(id) {
            self.inner.end(&instance, exited(code, false));
        }
    }

    fn record(&self, f: impl FnOnce(&mut FakeView)) {
        self.inner.record(f);
    }
}

impl FakeInner {
    fn record(&self, f: impl FnOnce(&mut FakeView)) {
        {
            let mut view = self.view.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut view);
            view.peak_running = view.peak_running.max(view.running.len());
        }
        self.changed.notify_waiters();
    }

    fn end(&self, instance: &FakeInstance, status: InstanceStatus) {
        instance.exited.store(true, Ordering::SeqCst);
        let mut ended = false;
        instance.status.send_if_modified(|s| {
            if s.state.is_terminal() {
                return false;
            }
            *s = status;
            ended = true;
            true
        });
        if ended {
            self.instances.lock().unwrap_or_else(|p| p.into_inner()).remove(&instance.id);
            let id = instance.id.clone();
            self.record(|v| v.running.retain(|r| *r != id));
        }
    }
}

fn exited(code: i32, stopping: bool) -> InstanceStatus {
    let exit = Some(ExitInfo { code: Some(code), signal: None, oom_killed: false });
    if code == 0 || stopping {
        InstanceStatus { state: InstanceState::Stopped, reason: None, exit }
    } else {
        let reason = Some(format!("The container exited with code {code}."));
        InstanceStatus { state: InstanceState::Failed, reason, exit }
    }
}

/// A fake instance: a status and an address nobody listens on.
#[derive(Debug)]
pub struct FakeInstance {
    pub id: String,
    pub owner: Owner,
    status: watch::Sender<InstanceStatus>,
    exited: AtomicBool,
}

impl InstanceHandle for FakeInstance {
    fn id(&self) -> &str {
        &self.id
    }

    fn owner(&self) -> &Owner {
        &self.owner
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 9))
    }

    fn status(&self) -> InstanceStatus {
        self.status.borrow().clone()
    }

    fn state(&self) -> InstanceState {
        self.status.borrow().state
    }

    fn has_exited(&self) -> bool {
        self.exited.load(Ordering::SeqCst)
    }

    fn wait_terminal(&self) -> BoxFuture<'_, InstanceStatus> {
        Box::pin(async move {
            let mut rx = self.status.subscribe();
            match rx.wait_for(|s| s.state.is_terminal()).await {
                Ok(s) => s.clone(),
                Err(_) => self.status(),
            }
        })
    }
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl InstanceBackend for FakeBackend {
    fn start(&self, spec: LaunchSpec) -> BoxFuture<'static, Result<Arc<dyn InstanceHandle>, BackendError>> {
        let this = self.clone();
        Box::pin(async move {
            let behaviour = (this.inner.decide)(&spec);
            let owner = spec.owner.clone();
            this.record(|v| v.launches.push(spec));
            let id = format!("fake-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
            let (delay, outcome) = match behaviour {
                Behaviour::Serve { start_delay } => (start_delay, Ok(None)),
                Behaviour::Exit { run_for, code } => (Duration::ZERO, Ok(Some((run_for, code)))),
                Behaviour::FailStart { start_delay, message } => (start_delay, Err(BackendError::NotReady { message })),
                Behaviour::NoCapacity { message } => (Duration::ZERO, Err(BackendError::NoCapacity { message })),
            };
            tokio::time::sleep(delay).await;
            let exit_after = outcome?;
            let ready = InstanceStatus { state: InstanceState::Ready, reason: None, exit: None };
            let instance = Arc::new(FakeInstance {
                id: id.clone(),
                owner,
                status: watch::Sender::new(ready),
                exited: AtomicBool::new(false),
            });
            this.inner.instances.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), instance.clone());
            this.record(|v| {
                v.running.push(id.clone());
                v.started += 1;
            });
            if let Some((run_for, code)) = exit_after {
                let (inner, instance) = (this.inner.clone(), instance.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(run_for).await;
                    inner.end(&instance, exited(code, false));
                });
            }
            Ok(instance as Arc<dyn InstanceHandle>)
        })
    }

    fn stop(&self, instance: Arc<dyn InstanceHandle>, _grace: Duration) -> BoxFuture<'static, InstanceStatus> {
        let this = self.clone();
        Box::pin(async move {
            this.record(|v| v.stops += 1);
            if let Some(fake) = this.instance(instance.id()) {
                fake.status.send_modify(|s| s.state = InstanceState::Stopping);
                this.inner.end(&fake, exited(0, true));
            }
            instance.wait_terminal().await
        })
    }

    fn signal(&self, instance: &dyn InstanceHandle, signal: Signal) -> BoxFuture<'static, Result<(), BackendError>> {
        let fake = self.instance(instance.id());
        let id = instance.id().to_owned();
        let inner = self.inner.clone();
        Box::pin(async move {
            let fake = fake.ok_or(BackendError::Gone(id))?;
            inner.end(&fake, exited(128 + signal.number(), true));
            Ok(())
        })
    }

    fn log(&self, instance: &dyn InstanceHandle, severity: Severity, message: String) -> BoxFuture<'static, ()> {
        let id = instance.id().to_owned();
        self.record(|v| v.logs.push((id, severity, message)));
        Box::pin(async {})
    }

    fn stats(&self, instance: &dyn InstanceHandle) -> Option<InstanceStats> {
        self.instance(instance.id()).map(|_| InstanceStats::default())
    }
}
