//! salesplanctl against the running services: its commands and its errors.

use std::{process::Output, time::Duration};

use integration_tests::{Stack, stack::eventually};
use salesplan_platform::Permission;

struct Ctl<'a> {
    stack: &'a Stack,
}

impl Ctl<'_> {
    async fn run(&self, token: Option<&str>, args: &[&str]) -> anyhow::Result<Output> {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_salesplanctl"));
        command
            .args(args)
            .env_remove("SALESPLAN_TOKEN")
            .env(
                "SALESPLAN_DEAL_SERVICE_URL",
                self.stack.deal_service.grpc_url(),
            )
            .env(
                "SALESPLAN_INTAKE_URL",
                self.stack.tunnel_listener.grpc_url(),
            )
            .env("SALESPLAN_REPORTING_URL", self.stack.reporting.grpc_url())
            .env(
                "SALESPLAN_DISTRIBUTOR_URL",
                self.stack.distributor.grpc_url(),
            );
        if let Some(token) = token {
            command.env("SALESPLAN_TOKEN", token);
        }
        Ok(command.output().await?)
    }

    /// Runs and expects success; returns stdout.
    async fn ok(&self, token: &str, args: &[&str]) -> anyhow::Result<String> {
        let output = self.run(Some(token), args).await?;
        let stdout = String::from_utf8(output.stdout)?;
        anyhow::ensure!(
            output.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(stdout)
    }

    async fn json(&self, token: &str, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        Ok(serde_json::from_str(&self.ok(token, &all).await?)?)
    }
}

#[tokio::test]
async fn commands_work_against_the_running_services() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let ctl = Ctl { stack: &stack };

    // A token minted by the CLI is accepted by the services.
    let admin = ctl
        .ok(
            "",
            &[
                "token",
                "--account",
                "acme",
                "--user",
                "admin",
                "--perm",
                "plans:admin",
            ],
        )
        .await?
        .trim()
        .to_owned();
    let boss = stack.token(
        "acme",
        "boss",
        &[
            Permission::DealsEditAll,
            Permission::DealsBulkEdit,
            Permission::IntakeWrite,
            Permission::ReportsRead,
        ],
    );

    let plan = ctl
        .json(
            &admin,
            &[
                "plans",
                "create",
                "--name",
                "CLI plan",
                "--label",
                "CLI",
                "--amount",
                "5000",
                "--distribution",
                "round-robin",
                "--manager",
                "m1",
                "--manager",
                "m2",
                "--response-deadline",
                "3600",
                "--max-reassignments",
                "2",
            ],
        )
        .await?;
    let plan_id = plan["id"].as_str().expect("plan id").to_owned();
    assert_eq!(
        (
            plan["distribution"]["response_deadline_seconds"].clone(),
            plan["distribution"]["max_reassignments"].clone()
        ),
        (3600.into(), 2.into())
    );
    assert_eq!(plan["managers"], serde_json::json!(["m1", "m2"]));
    // The distribution changed after creation: a shorter deadline, one reassignment, then
    // back to the created one (the rest of this test relies on it).
    let changed = ctl
        .json(
            &admin,
            &[
                "plans",
                "distribution",
                &plan_id,
                "--distribution",
                "least-open",
                "--response-deadline",
                "600",
                "--max-reassignments",
                "1",
            ],
        )
        .await?;
    assert_eq!(
        changed["distribution"]["response_deadline_seconds"], 600,
        "{changed}"
    );
    assert_eq!(changed["distribution"]["max_reassignments"], 1, "{changed}");
    let strategy = changed["distribution"]["strategy"]
        .as_str()
        .unwrap_or_default();
    assert!(strategy.contains("LEAST_OPEN"), "{changed}");
    let back = [
        "plans",
        "distribution",
        &plan_id,
        "--response-deadline",
        "3600",
        "--max-reassignments",
        "2",
    ];
    let back = ctl.json(&admin, &back).await?;
    assert_eq!(
        back["distribution"]["response_deadline_seconds"], 3600,
        "{back}"
    );
    let listed = ctl.ok(&admin, &["plans", "list"]).await?;
    assert!(listed.contains("CLI plan"), "{listed}");
    let with_stage = ctl
        .json(
            &admin,
            &[
                "plans",
                "add-stage",
                &plan_id,
                "--name",
                "Qualified",
                "--position",
                "1",
            ],
        )
        .await?;
    assert_eq!(with_stage["stages"][1]["name"], "Qualified");
    let with_reasons = ctl
        .json(
            &admin,
            &[
                "plans",
                "reasons",
                &plan_id,
                "--require",
                "--reason",
                "Price",
                "--reason",
                "Timing",
            ],
        )
        .await?;
    assert_eq!(with_reasons["loss_reasons"]["reasons"][0]["name"], "Price");
    let price = with_reasons["loss_reasons"]["reasons"][0]["id"]
        .as_str()
        .expect("reason")
        .to_owned();
    let lost_stage = with_reasons["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .find(|s| s["kind"] == "lost")
        .and_then(|s| s["id"].as_str())
        .expect("lost stage")
        .to_owned();

    // Deals: create, list, move with a reason, board, history, reopen.
    let deal = ctl
        .json(
            &boss,
            &[
                "deals",
                "create",
                "--plan",
                &plan_id,
                "--name",
                "Ann",
                "--phone",
                "+1 555 0100",
                "--manager",
                "m1",
            ],
        )
        .await?;
    let deal_id = deal["id"].as_str().expect("deal id").to_owned();
    // The plan's changes, live: from the start of the feed, the deal's creation first.
    let mut watched = vec!["--json"];
    watched.extend_from_slice(&[
        "deals", "watch", "--plan", &plan_id, "--resume", "w1.0", "--count", "1",
    ]);
    // A line a message: the token it opens with, then the change.
    let lines: Vec<serde_json::Value> = ctl
        .ok(&boss, &watched)
        .await?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(
        (
            lines[0]["checkpoint"].as_bool(),
            lines[0]["resume_token"].as_str()
        ),
        (Some(true), Some("w1.0"))
    );
    let watched = &lines[1];
    assert_eq!(
        (watched["kind"].as_str(), watched["deal"]["id"].as_str()),
        (Some("created"), Some(deal_id.as_str())),
        "{watched}"
    );
    assert!(watched["resume_token"].is_string(), "{watched}");
    let listed = ctl
        .json(
            &boss,
            &["deals", "list", "--plan", &plan_id, "--search", "555 0100"],
        )
        .await?;
    assert_eq!(listed["total_count"], 1);
    let lost = ctl
        .json(
            &boss,
            &[
                "deals",
                "move",
                &deal_id,
                "--stage",
                &lost_stage,
                "--reason",
                &price,
            ],
        )
        .await?;
    assert_eq!(lost["status"], "lost");
    let board = ctl.ok(&boss, &["deals", "board", &plan_id]).await?;
    assert!(board.contains("Lost") && board.contains("Ann"), "{board}");
    let reopened = ctl.json(&boss, &["deals", "reopen", &deal_id]).await?;
    assert_eq!(reopened["status"], "open");
    let history = ctl.ok(&boss, &["deals", "history", &deal_id]).await?;
    for action in ["created", "closed", "reopened"] {
        assert!(history.contains(action), "{history}");
    }
    // Changes by the boss accept nothing; the manager accepts.
    assert_eq!(reopened["accepted_at"], serde_json::Value::Null);
    // With no permission at all: a manager accepts the deals assigned to them.
    let m1 = stack.token("acme", "m1", &[]);
    let accepted = ctl.json(&m1, &["deals", "accept", &deal_id]).await?;
    assert!(accepted["accepted_at"].is_string(), "{accepted}");
    let history = ctl.ok(&boss, &["deals", "history", &deal_id]).await?;
    assert!(history.contains("accepted"), "{history}");
    let times = eventually(Duration::from_secs(15), || async {
        let times = ctl
            .json(&admin, &["reports", "response-times", "--plan", &plan_id])
            .await?;
        Ok((times["rows"][0]["accepted"] == 1).then_some(times))
    })
    .await?;
    assert_eq!(times["rows"][0]["manager_id"], "m1", "{times}");
    // A period: the assignment is in one from 2000 on, and in none that ended in 2000.
    let since_2000 = [
        "reports",
        "response-times",
        "--plan",
        &plan_id,
        "--from",
        "2000-01-01T00:00:00Z",
    ];
    let times = ctl.json(&admin, &since_2000).await?;
    assert_eq!(times["rows"][0]["accepted"], 1, "{times}");
    let until_2000 = [
        "reports",
        "response-times",
        "--plan",
        &plan_id,
        "--to",
        "2000-01-01T00:00:00Z",
    ];
    let times = ctl.json(&admin, &until_2000).await?;
    assert_eq!(times["rows"].as_array().map(Vec::len), Some(0), "{times}");

    // Intake: one contact, then a CSV bulk add and its retry.
    let added = ctl
        .json(
            &boss,
            &[
                "intake",
                "add",
                "--plan",
                &plan_id,
                "--run",
                "r1",
                "--email",
                "bob@example.com",
            ],
        )
        .await?;
    assert_eq!(added["duplicate"], false);
    let token = added["consistency_token"].as_str().unwrap_or_default();
    let found = ctl
        .json(
            &boss,
            &[
                "deals",
                "list",
                "--plan",
                &plan_id,
                "--search",
                "bob@example.com",
                "--fresh-as",
                token,
            ],
        )
        .await?;
    assert_eq!(
        found["total_count"], 1,
        "the lead's deal, read at once: {found}"
    );
    // Why the lead's deal has its manager: the distributor's decision, every candidate.
    let lead_deal = found["deals"][0]["id"]
        .as_str()
        .expect("deal id")
        .to_owned();
    let why = ctl.json(&boss, &["deals", "explain", &lead_deal]).await?;
    assert_eq!(why["deal_id"], lead_deal.as_str(), "{why}");
    let chosen: Vec<&serde_json::Value> = why["candidates"]
        .as_array()
        .map(|c| c.iter().filter(|c| c["chosen"] == true).collect())
        .unwrap_or_default();
    assert_eq!(chosen.len(), 1, "{why}");
    assert_eq!(chosen[0]["manager_id"], why["manager_id"], "{why}");
    assert_eq!(
        why["earlier"],
        serde_json::json!([]),
        "a first decision: {why}"
    );
    let table = ctl.ok(&boss, &["deals", "explain", &lead_deal]).await?;
    assert!(
        table.contains("candidate") && table.contains("why"),
        "{table}"
    );
    let dir = tempfile::tempdir()?;
    let csv = dir.path().join("audience.csv");
    let mut rows = String::from("external_id,name,email\n");
    for i in 0..25 {
        rows.push_str(&format!("sub-{i},Subscriber {i},\n"));
    }
    rows.push_str(",Nobody,not-an-email\n");
    std::fs::write(&csv, rows)?;
    let csv_path = csv.to_string_lossy().to_string();
    let bulk = ctl
        .json(
            &boss,
            &["intake", "bulk", "--plan", &plan_id, "--file", &csv_path],
        )
        .await?;
    assert_eq!(bulk["accepted"], 25);
    assert_eq!(bulk["rejected"].as_array().map(Vec::len), Some(1));
    let again = ctl
        .ok(
            &boss,
            &["intake", "bulk", "--plan", &plan_id, "--file", &csv_path],
        )
        .await?;
    assert!(
        again.contains("0 accepted, 25 duplicates, 1 rejected"),
        "{again}"
    );

    // Reports: once the deal is lost again, the report shows it.
    let lost = ctl
        .json(
            &boss,
            &[
                "deals",
                "move",
                &deal_id,
                "--stage",
                &lost_stage,
                "--reason",
                &price,
            ],
        )
        .await?;
    assert_eq!(lost["status"], "lost");
    let report = eventually(Duration::from_secs(15), || async {
        let report = ctl
            .json(
                &boss,
                &["reports", "loss-reasons", "--by", "manager", "--details"],
            )
            .await?;
        Ok((report["totals"]["lost"] == 1).then_some(report))
    })
    .await?;
    assert_eq!(report["rows"][0]["name"], "m1");
    assert_eq!(report["rows"][0]["reasons"][0]["name"], "Price");
    let table = ctl.ok(&boss, &["reports", "loss-reasons"]).await?;
    assert!(
        table.contains("CLI plan") && table.contains("Price 1 (100.0%)"),
        "{table}"
    );

    // Availability: a schedule in the manager's time zone with two days off, shown back;
    // a pause and a resume; the list.
    let scheduled = ctl
        .json(
            &admin,
            &[
                "managers",
                "schedule",
                "m2",
                "--tz",
                "Europe/Berlin",
                "--hours",
                "mon-fri=09:00-13:00,14:00-18:00",
                "--off",
                "2026-12-24..2026-12-25",
            ],
        )
        .await?;
    assert_eq!(scheduled["time_zone"], "Europe/Berlin");
    assert_eq!(scheduled["week"].as_array().map(Vec::len), Some(5));
    assert_eq!(
        scheduled["week"][0]["hours"][1],
        serde_json::json!(["14:00", "18:00"])
    );
    assert_eq!(
        scheduled["days_off"][0],
        serde_json::json!(["2026-12-24", "2026-12-25"])
    );
    let shown = ctl.ok(&boss, &["managers", "show", "m2"]).await?;
    assert!(shown.contains("mon 09:00–13:00, 14:00–18:00"), "{shown}");
    let paused = ctl.json(&admin, &["managers", "pause", "m2"]).await?;
    assert_eq!(
        (
            paused["paused"].clone(),
            paused["unavailable_because"].clone()
        ),
        (true.into(), "paused".into())
    );
    let resumed = ctl.json(&admin, &["managers", "resume", "m2"]).await?;
    assert_eq!(resumed["version"], 3);
    let listed = ctl.ok(&boss, &["managers", "list"]).await?;
    assert!(
        listed.contains("m2") && listed.contains("Europe/Berlin"),
        "{listed}"
    );
    let refused = ctl
        .run(
            Some(&admin),
            &["managers", "schedule", "m2", "--tz", "Mars/Base"],
        )
        .await?;
    assert_eq!(refused.status.code(), Some(4), "an invalid argument");

    // Capacity and the waiting queue: a plan whose one member holds at most one open deal;
    // of two leads, one waits, and the pipeline summary counts it.
    let small = [
        "plans",
        "create",
        "--name",
        "Small plan",
        "--label",
        "Small",
        "--manager",
        "m3:1:1",
    ];
    let small = ctl.json(&admin, &small).await?;
    let small_id = small["id"].as_str().expect("plan id").to_owned();
    for email in ["one@example.com", "two@example.com"] {
        let lead = [
            "intake", "add", "--plan", &small_id, "--run", email, "--email", email,
        ];
        ctl.json(&boss, &lead).await?;
    }
    let summary = eventually(Duration::from_secs(15), || async {
        let summary = ctl
            .json(&boss, &["reports", "pipeline", "--plan", &small_id])
            .await?;
        Ok((summary["total_deals"] == 2).then_some(summary))
    })
    .await?;
    let rows = summary["managers"].as_array().cloned().unwrap_or_default();
    let row = |m: serde_json::Value| rows.iter().find(|r| r["manager_id"] == m).cloned();
    let (m3, unassigned) = (row("m3".into()), row(serde_json::Value::Null));
    assert_eq!(m3.map(|r| r["open"].clone()), Some(1.into()), "{summary}");
    assert_eq!(
        unassigned.map(|r| (r["open"].clone(), r["waiting"].clone())),
        Some((1.into(), 1.into())),
        "{summary}"
    );
    let table = ctl
        .ok(&boss, &["reports", "pipeline", "--plan", &small_id])
        .await?;
    // The unassigned row's last column is its waiting count.
    let unassigned = table.lines().find(|l| l.contains("(unassigned)"));
    let waiting = unassigned.and_then(|l| l.split_whitespace().last());
    assert_eq!(waiting, Some("1"), "{table}");

    // Nothing was refused by the broker: no parked events, and none to replay.
    let parked = ctl.json(&admin, &["outbox", "parked"]).await?;
    assert_eq!(parked["events"], serde_json::json!([]));
    let replayed = ctl.json(&admin, &["outbox", "replay", "1"]).await?;
    assert_eq!(replayed["replayed"], 0);
    // Every lead became a deal: no rejections.
    let rejected = ctl.json(&admin, &["intake", "rejections"]).await?;
    assert_eq!(rejected["rejections"], serde_json::json!([]));

    // Everything about bob, then erasing him: his deal loses him; a repeat prints the same
    // receipt.
    let document = ctl
        .ok(&boss, &["contacts", "export", "--email", "bob@example.com"])
        .await?;
    let document: serde_json::Value = serde_json::from_str(&document)?;
    assert_eq!(
        document["deals"].as_array().map(Vec::len),
        Some(1),
        "{document}"
    );
    assert_eq!(
        document["deals"][0]["history"][0]["action"],
        "HISTORY_ACTION_CREATED"
    );
    let dpo = stack.token("acme", "dpo", &[Permission::ContactsErase]);
    let erase = ["contacts", "erase", "--email", "BOB@example.com"];
    let receipt = ctl.json(&dpo, &erase).await?;
    assert_eq!(receipt["erased"][0]["count"], 1, "{receipt}");
    let again = ctl.ok(&dpo, &erase).await?;
    assert!(
        again.contains(receipt["receipt_id"].as_str().unwrap_or("?"))
            && again.contains("0 deals erased now, 1 in all"),
        "{again}"
    );
    let gone = ctl
        .json(
            &boss,
            &[
                "deals",
                "list",
                "--plan",
                &plan_id,
                "--search",
                "bob@example.com",
            ],
        )
        .await?;
    assert_eq!(gone["deals"], serde_json::json!([]));
    stack.stop().await
}

#[tokio::test]
async fn errors_are_the_servers_message_with_a_usable_exit_code() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let ctl = Ctl { stack: &stack };
    let admin = stack.token("acme", "admin", &[Permission::PlansAdmin]);

    let no_token = ctl.run(None, &["plans", "list"]).await?;
    assert_eq!(no_token.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&no_token.stderr).starts_with("error: UNAUTHENTICATED"));

    let missing = ctl
        .run(
            Some(&admin),
            &["plans", "show", "00000000-0000-0000-0000-000000000001"],
        )
        .await?;
    assert_eq!(missing.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(
        stderr.trim(),
        "error: NOT_FOUND: plan 00000000-0000-0000-0000-000000000001 not found"
    );

    let invalid = ctl
        .run(
            Some(&admin),
            &["plans", "create", "--name", "X", "--label", "THIRTEEN-CHAR"],
        )
        .await?;
    assert_eq!(invalid.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&invalid.stderr).contains("INVALID_ARGUMENT: chat_label:"));

    let manager = stack.token(
        "acme",
        "m1",
        &[
            salesplan_platform::Permission::DealsRead,
            salesplan_platform::Permission::ReportsRead,
        ],
    );
    let denied = ctl
        .run(
            Some(&manager),
            &["plans", "create", "--name", "X", "--label", "X"],
        )
        .await?;
    assert_eq!(denied.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("plans:admin"));

    // A conflict with the state: a deal in an archived plan.
    let plan = ctl
        .json(
            &admin,
            &["plans", "create", "--name", "Closed", "--label", "C"],
        )
        .await?;
    let plan_id = plan["id"].as_str().expect("plan id").to_owned();
    ctl.ok(&admin, &["plans", "archive", &plan_id]).await?;
    let boss = stack.token("acme", "boss", &[Permission::DealsEditAll]);
    let closed = ctl
        .run(
            Some(&boss),
            &[
                "deals",
                "create",
                "--plan",
                &plan_id,
                "--name",
                "Ann",
                "--phone",
                "+1 555 0100",
            ],
        )
        .await?;
    assert_eq!(
        closed.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&closed.stderr)
    );
    assert!(
        String::from_utf8_lossy(&closed.stderr).starts_with("error: FAILED_PRECONDITION"),
        "{}",
        String::from_utf8_lossy(&closed.stderr)
    );

    // The CLI's own refusal of an argument is an invalid argument too.
    let own = ctl
        .run(Some(&boss), &["deals", "list", "--status", "maybe"])
        .await?;
    assert_eq!(own.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&own.stderr);
    assert_eq!(
        stderr.trim(),
        "error: --status: \"maybe\" is not open, won or lost"
    );

    // A reader that went away (`| head`) ends the output quietly, not with a panic.
    let mut closed_pipe = tokio::process::Command::new(env!("CARGO_BIN_EXE_salesplanctl"));
    let mut child = closed_pipe
        .args([
            "--deal-service",
            &stack.deal_service.grpc_url(),
            "plans",
            "list",
        ])
        .env("SALESPLAN_TOKEN", &admin)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    drop(child.stdout.take());
    let gone = child.wait_with_output().await?;
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert_eq!((gone.status.code(), stderr.trim()), (Some(0), ""));

    let mut unreachable = tokio::process::Command::new(env!("CARGO_BIN_EXE_salesplanctl"));
    let down = unreachable
        .args(["--deal-service", "http://127.0.0.1:1", "plans", "list"])
        .env("SALESPLAN_TOKEN", &admin)
        .output()
        .await?;
    assert_eq!(down.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&down.stderr).starts_with("error: UNAVAILABLE"));
    stack.stop().await
}
