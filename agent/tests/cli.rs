//! The binary's contract: a bad variable exits 2 naming it, `--help` lists every variable, and
//! SIGTERM turns `/ready` to 503 before the listener closes, then exits 0.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kubenurse_agent::config::vars::ALL;
use kubenurse_testkit::http::http_get;

const BIN: &str = env!("CARGO_BIN_EXE_kubenurse-agent");

/// A configuration that needs no API server: every check that needs one is off.
fn base_env(ip: &str, port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("KUBENURSE_CHECK_ME_INGRESS", "false".into()),
        ("KUBENURSE_CHECK_ME_SERVICE", "false".into()),
        ("KUBENURSE_CHECK_API_SERVER_DIRECT", "false".into()),
        ("KUBENURSE_CHECK_API_SERVER_DNS", "false".into()),
        ("KUBENURSE_CHECK_NEIGHBOURHOOD", "false".into()),
        ("KUBENURSE_POD_NAME", "kubenurse-cli".into()),
        ("KUBENURSE_BIND_ADDRESS", ip.into()),
        ("KUBENURSE_HTTP_PORT", port.to_string()),
        ("KUBENURSE_CHECK_INTERVAL", "200ms".into()),
    ]
}

fn command(env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear().envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    cmd
}

#[test]
fn every_invalid_value_exits_2_naming_the_variable() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-bad");
    std::fs::create_dir_all(&dir).unwrap_or_default();
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap_or_default();
    let garbage = garbage.display().to_string();
    let cases: Vec<Vec<(&str, String)>> = vec![
        vec![("KUBENURSE_CHECK_INTERVAL", "5 seconds".into())],
        vec![("KUBENURSE_CHECK_TIMEOUT", "soon".into())],
        vec![("KUBENURSE_SHUTDOWN_DURATION", "-3s".into())],
        vec![("KUBENURSE_NEIGHBOUR_LIMIT", "ten".into())],
        vec![("KUBENURSE_EXTRA_CHECKS", "missing-url".into())],
        vec![("KUBENURSE_EXTRA_CA", "/nonexistent/ca.pem".into())],
        vec![("KUBENURSE_EXTRA_CA", garbage.clone())],
        vec![("KUBENURSE_USE_TLS", "true".into()), ("KUBENURSE_CERT_FILE", "/nonexistent.crt".into())],
        vec![
            ("KUBENURSE_USE_TLS", "true".into()),
            ("KUBENURSE_CERT_KEY", garbage.clone()),
            ("KUBENURSE_CERT_FILE", garbage.clone()),
        ],
        vec![("KUBENURSE_NEIGHBOUR_FILTER", "app in (kubenurse".into())],
        vec![("KUBENURSE_HISTOGRAM_BUCKETS", "0.1,fast".into())],
        vec![("KUBENURSE_INSECURE", "yes".into())],
        vec![("KUBENURSE_HTTP_PORT", "http".into())],
    ];
    for case in cases {
        let mut env = base_env("127.0.62.1", 18080);
        env.extend(case.iter().cloned());
        let out = command(&env).stdin(Stdio::null()).output().expect("agent binary runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The last variable of a case is the one at fault.
        let (var, _) = case.last().cloned().unwrap_or_default();
        assert_eq!(out.status.code(), Some(2), "{case:?}: {stderr}");
        assert!(stderr.contains(var), "{case:?}: message does not name {var}: {stderr}");
    }
}

#[test]
fn help_lists_every_variable_with_its_default() {
    let out = Command::new(BIN).arg("--help").output().expect("agent binary runs");
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for (name, default) in ALL.iter().map(|v| (v.name, v.default_text())) {
        let line = help.lines().find(|l| l.trim_start().starts_with(name)).unwrap_or_default();
        assert!(!line.is_empty(), "{name} missing from --help");
        if !default.is_empty() {
            assert!(line.contains(default), "{name}: default {default} missing: {line}");
        }
    }
    let out = Command::new(BIN).arg("--bogus").output().expect("agent binary runs");
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn sigterm_makes_ready_503_before_the_listener_closes() {
    let (ip, port) = ("127.0.62.2", 18080);
    let mut env = base_env(ip, port);
    env.push(("KUBENURSE_SHUTDOWN_DURATION", "1500ms".into()));
    let child = command(&env).stdin(Stdio::null()).stderr(Stdio::null()).spawn().expect("agent starts");
    // Killed however the test ends, so a failure leaves no agent holding the address.
    let mut child = KillOnDrop(child);
    let ready = format!("http://{ip}:{port}/ready");
    let start = Instant::now();
    loop {
        if matches!(http_get(&ready).await, Ok((200, _))) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "agent never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Ready comes with the listeners; /alive turns 200 when the first round has finished.
    let alive = format!("http://{ip}:{port}/alive");
    let mut last = (0, String::new());
    while start.elapsed() < Duration::from_secs(20) {
        last = http_get(&alive).await.expect("alive answers");
        if last.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last.0, 200, "{}", last.1);
    let root = http_get(&format!("http://{ip}:{port}/")).await.expect("/ answers");
    assert_eq!(root.0, 301, "/ redirects to /alive");

    let status = Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().expect("kill runs");
    assert!(status.success());
    let mut saw_503 = false;
    let mut closed = false;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        match http_get(&ready).await {
            Ok((503, _)) => saw_503 = true,
            Ok((code, _)) => assert!(!saw_503, "/ready went back to {code} after 503"),
            Err(_) => {
                closed = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_503, "/ready never answered 503 during the shutdown wait");
    assert!(closed, "listener never closed");
    let exit = child.0.wait().expect("agent exits");
    assert_eq!(exit.code(), Some(0));
}

/// A child process killed when dropped (a no-op once it has exited).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
