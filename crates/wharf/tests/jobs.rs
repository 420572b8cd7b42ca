//! Jobs end to end with real containers: parallel tasks with a retry, timeouts, per-execution
//! overrides, cancellation, one failing task stopping the others, and bad input.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use wharf_testsupport::WharfLab;

wharf_testsupport::suite_lab!(Env);

fn setup() -> Env {
    Env(WharfLab::start(Path::new(env!("CARGO_BIN_EXE_wharf")), &[], "worker:v1"))
}

impl Env {
    /// `wharf run jobs ARGS --project batch`: whether it succeeded, stdout, stderr.
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let mut full = vec!["run", "jobs"];
        full.extend(args);
        full.extend(["--project", "batch"]);
        self.wharf(&full)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "wharf run jobs {args:?} failed:\n{err}");
        out
    }

    fn logs(&self, filter: &[&str]) -> String {
        let mut args = vec!["logs", "read", "--limit", "500"];
        args.extend(filter);
        let out = self.server.cli(&args).unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn describe_execution(&self, execution: &str) -> Value {
        let out = self.ok(&["executions", "describe", execution, "--format", "json"]);
        serde_json::from_str(&out).unwrap()
    }
}

#[tokio::test]
async fn ten_tasks_three_at_a_time_with_one_retry() {
    let env = setup();
    env.ok(&[
        "create",
        "crunch",
        "--image",
        &env.image,
        "--args",
        "job",
        "--tasks",
        "10",
        "--parallelism",
        "3",
        "--set-env-vars",
        "TESTAPP_FAIL_TASK=7,TESTAPP_SLEEP_MS=400",
    ]);
    // Watch the number of running instances while the execution runs.
    let data = env.server.data_dir().join("instances");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                peak = peak.max(std::fs::read_dir(&data).map(|d| d.count()).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        })
    };
    let execution = env.ok(&["execute", "crunch", "--wait"]).trim().to_owned();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let peak = watcher.join().unwrap();
    assert!(peak <= 3, "{peak} tasks ran at once with parallelism 3");
    assert!(peak >= 2, "tasks did not run in parallel (peak {peak})");

    let e = env.describe_execution(&execution);
    assert_eq!(e["succeededCount"], 10, "{e}");
    assert_eq!(e["conditions"][0]["state"], "CONDITION_SUCCEEDED");
    assert_eq!(e["retriedCount"], 1);
    let tasks = e["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 10);
    assert_eq!(tasks[7]["retried"], 1, "task 7 should show two attempts: {}", tasks[7]);
    assert!(tasks.iter().enumerate().all(|(i, t)| i == 7 || t["retried"] == 0));

    let logs = env.logs(&["--job", "crunch", "--execution", &execution]);
    for index in 0..10 {
        assert!(logs.contains(&format!("task {index} attempt 0")), "task {index} did not log:\n{logs}");
    }
    assert!(logs.contains("task 7 attempt 1"), "{logs}");
    assert!(logs.contains("task 7 attempt 0 failing on purpose"), "{logs}");
}

#[tokio::test]
async fn timeouts_kill_and_retry_then_fail_with_a_reason() {
    let env = setup();
    env.ok(&[
        "create",
        "slow",
        "--image",
        &env.image,
        "--args",
        "job",
        "--task-timeout",
        "1",
        "--max-retries",
        "1",
        "--set-env-vars",
        "TESTAPP_SLEEP_MS=20000",
    ]);
    let started = Instant::now();
    let (ok, _, err) = env.run(&["execute", "slow", "--wait"]);
    assert!(!ok, "an execution whose task always times out succeeded");
    assert!(err.contains("exceeded its timeout of 1s"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30), "the timeout did not stop the task");
    let list = env.ok(&["executions", "list", "--job", "slow", "--format", "value(name.basename())"]);
    let e = env.describe_execution(list.lines().next().unwrap());
    assert_eq!(e["tasks"][0]["retried"], 1, "the timed-out task was not retried: {e}");
    assert_eq!(e["conditions"][0]["state"], "CONDITION_FAILED");

    env.ok(&[
        "create",
        "once",
        "--image",
        &env.image,
        "--args",
        "job",
        "--task-timeout",
        "1",
        "--max-retries",
        "0",
        "--set-env-vars",
        "TESTAPP_SLEEP_MS=20000",
    ]);
    let (ok, _, err) = env.run(&["execute", "once", "--wait"]);
    assert!(!ok);
    assert!(err.contains("failed after 1 attempt(s) (max retries 0)"), "{err}");
    assert_eq!(env.instances(), 0);
}

#[tokio::test]
async fn execute_overrides_apply_to_that_execution_only() {
    let env = setup();
    env.ok(&["create", "echo", "--image", &env.image, "--args", "job"]);
    let first =
        env.ok(&["execute", "echo", "--wait", "--update-env-vars", "TESTAPP_ECHO=just-this-once"]).trim().to_owned();
    let second = env.ok(&["execute", "echo", "--wait"]).trim().to_owned();
    assert!(env.logs(&["--execution", &first]).contains("echo just-this-once"));
    let second_logs = env.logs(&["--execution", &second]);
    assert!(second_logs.contains("task 0 attempt 0"), "{second_logs}");
    assert!(!second_logs.contains("just-this-once"), "the override leaked into the next execution");
    let job = env.ok(&["describe", "echo", "--format", "json"]);
    assert!(!job.contains("just-this-once"), "the override changed the job: {job}");
}

#[tokio::test]
async fn cancelling_stops_running_tasks() {
    let env = setup();
    env.ok(&[
        "create",
        "long",
        "--image",
        &env.image,
        "--args",
        "job",
        "--tasks",
        "2",
        "--set-env-vars",
        "TESTAPP_SLEEP_MS=60000",
    ]);
    let execution = env.ok(&["execute", "long"]).trim().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.instances() < 2 {
        assert!(Instant::now() < deadline, "tasks never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.ok(&["executions", "cancel", &execution]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let e = env.describe_execution(&execution);
        if e["conditions"][0]["executionReason"] == "CANCELLED" {
            assert_eq!(e["cancelledCount"], 2, "{e}");
            break;
        }
        assert!(Instant::now() < deadline, "the execution was not cancelled: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(env.instances(), 0, "cancelled tasks are still running");
}

#[tokio::test]
async fn bad_input_is_refused_and_creates_nothing() {
    let env = setup();
    for (args, expected) in [
        (vec!["create", "Bad_Job", "--image", env.image.as_str()], "lowercase letters"),
        (vec!["create", "neg", "--image", env.image.as_str(), "--tasks", "-1"], "out of range"),
        (vec!["create", "big", "--image", env.image.as_str(), "--tasks", "20000"], "out of range"),
        (vec!["create", "retry", "--image", env.image.as_str(), "--max-retries", "11"], "out of range"),
        (vec!["create", "day", "--image", env.image.as_str(), "--task-timeout", "700000"], "out of range"),
        (vec!["create", "ghost", "--image", "127.0.0.1:1/none:v1"], "could not be resolved"),
        (vec!["execute", "missing"], "was not found"),
    ] {
        let (ok, _, err) = env.run(&args);
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(expected), "{args:?}: expected {expected:?} in {err}");
    }
    let list = env.ok(&["list", "--format", "json"]);
    assert_eq!(list.trim(), "[]");
}

#[tokio::test]
async fn a_restart_retries_interrupted_tasks_and_the_execution_completes() {
    let mut env = setup();
    env.ok(&[
        "create",
        "resume",
        "--image",
        &env.image,
        "--args",
        "job",
        "--tasks",
        "2",
        "--set-env-vars",
        "TESTAPP_SLEEP_MS=3000",
    ]);
    let execution = env.ok(&["execute", "resume"]).trim().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.instances() < 2 {
        assert!(Instant::now() < deadline, "tasks never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.server.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let e = env.describe_execution(&execution);
        if e["conditions"][0]["state"] == "CONDITION_SUCCEEDED" {
            assert_eq!(e["succeededCount"], 2, "{e}");
            // Each interrupted attempt counted as a failed one, and was retried.
            assert_eq!(e["retriedCount"], 2, "{e}");
            break;
        }
        assert!(Instant::now() < deadline, "the execution did not complete after the restart: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One task exhausting its retries fails the execution and stops the others (README, Jobs):
/// the failing task's two attempts fail fast while its siblings would sleep for a minute; the
/// siblings are stopped (SIGTERM, which the test app logs) and counted as cancelled.
#[tokio::test]
async fn a_task_that_exhausts_its_retries_fails_the_execution_and_stops_the_others() {
    let env = setup();
    env.ok(&[
        "create",
        "fragile",
        "--image",
        &env.image,
        "--args",
        "job",
        "--tasks",
        "3",
        "--parallelism",
        "3",
        "--max-retries",
        "1",
        "--set-env-vars",
        "TESTAPP_FAIL_TASK=0,TESTAPP_FAIL_ATTEMPTS=10,TESTAPP_FAIL_AFTER_MS=1500,TESTAPP_SLEEP_MS=60000",
    ]);
    let started = Instant::now();
    let (ok, stdout, err) = env.run(&["execute", "fragile", "--wait"]);
    let took = started.elapsed();
    assert!(!ok, "an execution whose task always fails succeeded: {stdout}");
    assert!(err.contains("Task 0 failed after 2 attempt(s) (max retries 1)"), "{err}");
    assert!(took < Duration::from_secs(40), "the other tasks were not stopped: the execution took {took:?}");

    let list = env.ok(&["executions", "list", "--job", "fragile", "--format", "value(name.basename())"]);
    let execution = list.lines().next().unwrap().to_owned();
    let e = env.describe_execution(&execution);
    assert_eq!(e["conditions"][0]["state"], "CONDITION_FAILED", "{e}");
    assert_eq!(e["failedCount"], 1, "{e}");
    assert_eq!(e["cancelledCount"], 2, "{e}");
    assert_eq!(e["succeededCount"].as_i64().unwrap_or(0), 0, "{e}");
    assert_eq!(e["runningCount"].as_i64().unwrap_or(0), 0, "{e}");
    let tasks = e["tasks"].as_array().unwrap();
    assert_eq!(tasks[0]["retried"], 1, "{}", tasks[0]);
    assert_eq!(tasks[1]["retried"], 0, "{}", tasks[1]);
    assert_eq!(tasks[2]["retried"], 0, "{}", tasks[2]);

    let logs = env.logs(&["--execution", &execution]);
    assert!(logs.contains("task 0 attempt 1 failing on purpose"), "{logs}");
    for index in [1, 2] {
        assert!(logs.contains(&format!("task {index} attempt 0")), "task {index} never ran:\n{logs}");
    }
    assert_eq!(
        logs.matches("testapp: received SIGTERM, exiting").count(),
        2,
        "the two running siblings were not stopped with SIGTERM:\n{logs}"
    );
    assert_eq!(env.instances(), 0, "tasks of the failed execution are still running");
}
