//! The design's `track_feature_implementation` example, across real processes: an
//! orchestrator (this test) creates a feature task and three subtasks for three agents, each
//! agent is its own OS process, and the orchestrator follows the progress report until
//! everything is completed.

use std::process::Stdio;
use std::time::Duration;

use maos_coordination::track::{ProgressVisualizer, Task, TaskStatus, TaskTracker};
use maos_coordination::{AgentId, Workspace};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_feature_implementation_across_processes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ws = Workspace::init(dir.path())?;
    let me = AgentId::new("orchestrator")?;
    let tracker = TaskTracker::open_with(
        &ws,
        maos_coordination::track::Options::default().agent(me.clone()),
    )?;

    // Create the main task (a name with ':' and '#', which used to break the Gantt chart).
    let main_id = tracker
        .create_task(Task {
            name: "Implement Login: OAuth #2".into(),
            description: "sign in with an identity provider".into(),
            assigned_to: Some(me.clone()),
            ..Default::default()
        })
        .await?;
    let design_id = tracker
        .create_task(Task {
            name: "Design architecture".to_string(),
            assigned_to: Some(AgentId::new("architect")?),
            estimated_duration: Some(Duration::from_secs(1800)),
            ..Default::default()
        })
        .await?;
    let backend_id = tracker
        .create_task(Task {
            name: "Implement backend".to_string(),
            assigned_to: Some(AgentId::new("backend-engineer")?),
            dependencies: vec![design_id.clone()],
            ..Default::default()
        })
        .await?;
    let frontend_id = tracker
        .create_task(Task {
            name: "Implement frontend".to_string(),
            assigned_to: Some(AgentId::new("frontend-engineer")?),
            dependencies: vec![design_id.clone()],
            ..Default::default()
        })
        .await?;
    // The feature is done when its parts are.
    tracker.add_dependency(&main_id, &backend_id).await?;
    let main = tracker.add_dependency(&main_id, &frontend_id).await?;
    assert_eq!(main.status, TaskStatus::Blocked);

    let events = dir.path().join("events.txt");
    let mut workers = Vec::new();
    for agent in ["architect", "backend-engineer", "frontend-engineer"] {
        workers.push(
            crate::helper("track_worker")
                .arg(dir.path())
                .arg(agent)
                .arg(&events)
                .arg("--review")
                .stdout(Stdio::piped())
                .spawn()?,
        );
    }

    // Monitor progress: wake on changes, never poll on a fixed period.
    let visualizer = ProgressVisualizer::new(tracker.clone());
    let mut watch = tracker.watch()?;
    let mut rounds = 0;
    loop {
        let report = visualizer.generate_progress_report().await?;
        println!("Progress: {:.1}% complete", report.completion_percentage);
        assert!(!report.completion_percentage.is_nan());
        if report.completed_tasks == report.total_tasks {
            break;
        }
        if let Some(t) = tracker.claim(&me).await? {
            assert_eq!(t.id, main_id, "the orchestrator only takes its own task");
            tracker
                .update_status(&t.id, TaskStatus::Completed, Some("shipped".into()))
                .await?;
            continue;
        }
        rounds += 1;
        assert!(rounds < 1000, "progress stalled");
        watch.changed(Duration::from_secs(10)).await?;
    }
    for w in workers {
        let out = w.wait_with_output()?;
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    }

    // Each agent did its own task; the design came before the work that needs it.
    let tasks = tracker.list().await?;
    for t in &tasks {
        assert_eq!(t.status, TaskStatus::Completed, "{}", t.name);
        assert_eq!(t.attempts, 1);
    }
    let log = std::fs::read_to_string(&events)?;
    let pos = |what: &str| {
        log.lines()
            .position(|l| l.starts_with(what))
            .unwrap_or_else(|| panic!("{what} missing in {log}"))
    };
    assert!(pos(&format!("done {design_id}")) < pos(&format!("start {backend_id}")));
    assert!(pos(&format!("done {design_id}")) < pos(&format!("start {frontend_id}")));
    assert!(log.contains(&format!("start {backend_id} backend-engineer")));

    // The report is on disk, the Gantt chart escapes the name and has one section per agent.
    let report: maos_coordination::track::ProgressReport =
        serde_json::from_slice(&std::fs::read(ws.maos_dir().join("progress.json"))?)?;
    assert_eq!(report.completion_percentage, 100.0);
    assert_eq!(report.task_breakdown.len(), 4);
    let gantt = visualizer.generate_gantt_chart().await?;
    assert!(
        gantt.contains("Implement Login#58; OAuth #35;2 :done"),
        "{gantt}"
    );
    for s in [
        "architect",
        "backend-engineer",
        "frontend-engineer",
        "orchestrator",
    ] {
        assert!(gantt.contains(&format!("section {s}")), "{gantt}");
    }
    Ok(())
}
