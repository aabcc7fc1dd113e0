//! The binary's configuration contract: every bad value exits 2 naming the flag and the
//! environment variable; `--help` shows both with defaults.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_kubenurse-aggregator");

fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(BIN).env_clear().args(args).envs(env.iter().copied()).output().expect("binary runs");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Flags, environment, and the name the error must mention.
type Case = (&'static [&'static str], &'static [(&'static str, &'static str)], &'static str);

#[test]
fn bad_values_exit_2_naming_flag_and_variable() {
    let cases: [Case; 9] = [
        (&["--window", "five minutes"], &[], "KUBENURSE_AGGREGATOR_WINDOW"),
        (&["--window", "1s"], &[], "--window"),
        (&[], &[("KUBENURSE_AGGREGATOR_WINDOW", "0s")], "KUBENURSE_AGGREGATOR_WINDOW"),
        (&["--hysteresis", "zero"], &[], "KUBENURSE_AGGREGATOR_HYSTERESIS"),
        (&[], &[("KUBENURSE_AGGREGATOR_GRPC_ADDRESS", "nowhere")], "--grpc-address"),
        (&["--http-address", "127.0.0.1:99999"], &[], "KUBENURSE_AGGREGATOR_HTTP_ADDRESS"),
        (&["--slow-floor=-5ms"], &[], "--slow-floor"),
        (&["--tls-cert", "/etc/hostname"], &[], "KUBENURSE_AGGREGATOR_TLS_KEY"),
        (&["--tls-cert", "/etc/hostname", "--tls-key", "/etc/hostname"], &[], "--tls-cert"),
    ];
    for (args, env, named) in cases {
        let (code, stderr) = run(args, env);
        assert_eq!(code, Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?} {env:?}: does not name {named}: {stderr}");
    }
    let (code, _) = run(&["--no-such-flag"], &[]);
    assert_eq!(code, Some(2));
}

#[test]
fn help_shows_flags_variables_and_defaults() {
    let out = Command::new(BIN).arg("--help").output().expect("binary runs");
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--grpc-address",
        "KUBENURSE_AGGREGATOR_GRPC_ADDRESS",
        "0.0.0.0:50051",
        "--http-address",
        "0.0.0.0:8080",
        "--window",
        "5m",
        "--hysteresis",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}: {help}");
    }
}

#[test]
fn check_exits_2_on_bad_input_or_an_unreachable_aggregator() {
    let out = |args: &[&str]| {
        let out = Command::new(BIN).env_clear().args(args).output().expect("binary runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let (code, stdout, _) = out(&["check", "--url", "http://127.0.0.1:1"]);
    assert_eq!(code, Some(2), "{stdout}");
    assert!(stdout.starts_with("error: GET http://127.0.0.1:1/api/v1/status:"), "{stdout}");
    let (code, stdout, _) = out(&["check", "--url", "http://127.0.0.1:1", "--output", "json"]);
    assert_eq!(code, Some(2));
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
    assert_eq!(json["outcome"], "error", "{json}");
    let (code, stdout, _) = out(&["check", "--url", "https://127.0.0.1:1"]);
    assert_eq!(code, Some(2));
    assert!(stdout.contains("only http://"), "{stdout}");
    for bad in [
        &["check"][..],
        &["check", "--url", "http://x", "--wait", "soon"],
        &["check", "--url", "http://x", "--expect-nodes", "-1"],
    ] {
        let (code, _, stderr) = out(bad);
        assert_eq!(code, Some(2), "{bad:?}: {stderr}");
    }
    let (code, help, _) = out(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(help.contains("check"), "--help names the check command: {help}");
}
