//! `minerva verify` through the real CLI and daemon: the real default model is valid and
//! described; a truncated copy of it is invalid with the tensor and byte offset named; a
//! missing path is a usage error.

use minerva_e2e::{model_path, Daemon, MODEL};

#[test]
fn verify_the_real_model_a_truncated_copy_and_a_missing_path() {
    let model = model_path();
    let d = Daemon::start(&[]);

    // The real model, by path.
    let r = d.cli_json(&["verify", model.to_str().unwrap()]);
    assert_eq!(r["valid"], true, "{r}");
    assert_eq!(r["format"], "gguf");
    assert_eq!(r["architecture"], "llama");
    assert_eq!(r["quantization"], "Q4_1");
    assert!(r["error"].is_null(), "{r}");
    let params = r["parameter_count"].as_u64().unwrap();
    assert!((130_000_000..140_000_000).contains(&params), "{params}");
    assert_eq!(r["context_length"], 8192);
    assert_eq!(r["tensor_count"], 272);
    let size = std::fs::metadata(&model).unwrap().len();
    assert_eq!(r["file_size_bytes"].as_u64(), Some(size));
    assert!(r["estimated_memory_bytes"].as_u64().unwrap() > size);

    // By store name, readable output.
    let out = d.cli(&["verify", MODEL]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("valid") && text.contains("Q4_1"), "{text}");

    // A copy cut in the middle of the tensor data.
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("truncated.gguf");
    let bytes = std::fs::read(&model).unwrap();
    let keep = bytes.len() / 2;
    std::fs::write(&cut, &bytes[..keep]).unwrap();
    let r = d.cli_json_exiting(1, &["verify", cut.to_str().unwrap()]);
    assert_eq!(r["valid"], false);
    let e = &r["error"];
    assert_eq!(e["kind"], "tensor_out_of_bounds", "{r}");
    let tensor = e["tensor"].as_str().expect("a tensor is named");
    assert!(!tensor.is_empty());
    let offset = e["offset"].as_u64().expect("a byte offset");
    assert!(offset > 0 && offset < bytes.len() as u64, "{offset}");
    // The tensor it names really ends past the cut.
    let needed: u64 = e["expected"]
        .as_str()
        .and_then(|s| s.strip_prefix("file of at least "))
        .and_then(|s| s.strip_suffix(" bytes"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("expected field: {e}"));
    assert!(
        needed > keep as u64 && needed <= bytes.len() as u64,
        "{needed}"
    );
    assert_eq!(e["found"], format!("{keep} bytes"));
    assert!(e["message"].as_str().unwrap().contains(tensor));
    // No summary for a broken file, but the format is known.
    assert_eq!(r["format"], "gguf");

    // Readable form names the tensor too.
    let out = d.cli(&["verify", cut.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("INVALID") && text.contains(tensor), "{text}");

    // A missing path: usage error, exit 2, message on stderr.
    let out = d.cli(&["verify", "/no/such/model.gguf"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/model.gguf"));

    // No argument: clap's usage error, also 2.
    let out = d.cli(&["verify"]);
    assert_eq!(out.status.code(), Some(2));
}
