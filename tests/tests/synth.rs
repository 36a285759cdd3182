//! `minerva synth` end to end: the real CLI writes a synthetic model without any daemon, reports
//! what it wrote as JSON, and refuses bad arguments with a clear message.

use std::process::Command;

use minerva_e2e::{assert_success, bin};

fn minerva(args: &[&str]) -> std::process::Output {
    Command::new(bin("minerva"))
        // No daemon may be involved: point at a socket nobody serves, and never autostart.
        .env("MINERVA_ADDR", "/nonexistent/minerva-synth-test.sock")
        .arg("--no-autostart")
        .args(args)
        .output()
        .expect("run minerva")
}

#[test]
fn synth_tiny_gguf_reports_what_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.gguf");
    let out_s = out.to_str().unwrap();
    let args = [
        "--json",
        "synth",
        "--shape",
        "tiny",
        "--format",
        "gguf-q8_0",
        "-o",
        out_s,
    ];
    let o = minerva(&args);
    assert_success(&o, "minerva synth");
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert_eq!(report["shape"], "tiny");
    assert_eq!(report["format"], "gguf-q8_0");
    let size = std::fs::metadata(&out).unwrap().len();
    assert_eq!(report["total_bytes"].as_u64(), Some(size));
    assert_eq!(report["files"][0]["path"], out_s);
    assert!(report["parameters"].as_u64().unwrap() > 10_000_000);
    assert!(report["seconds"].as_f64().unwrap() > 0.0);
    // The F16 temp file is gone, and nothing else was left next to the output.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("tiny.gguf")]);

    // Again without --force: refused, the file untouched; with --force: replaced.
    let o = minerva(&args);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
    let mut forced = args.to_vec();
    forced.push("--force");
    assert!(minerva(&forced).status.success());
}

#[test]
fn synth_refuses_bad_names() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.gguf");
    let refused = |shape: &str, format: &str| {
        let o = minerva(&[
            "synth",
            "--shape",
            shape,
            "--format",
            format,
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let err = refused("llama-70b", "gguf-f16");
    assert!(
        err.contains("unknown shape") && err.contains("mistral-7b-v0.1"),
        "{err}"
    );
    let err = refused("tiny", "gguf-q3_k");
    assert!(
        err.contains("unknown format") && err.contains("gguf-q4_k_m"),
        "{err}"
    );
    assert!(!out.exists());
}
