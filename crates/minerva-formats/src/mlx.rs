//! MLX quantized models (mlx-lm layout): a SafeTensors folder whose `config.json` has a
//! `quantization` object (`bits`, `group_size`, per-layer overrides). A quantized linear
//! `X` is `X.weight` (uint32 `[.., out, in*bits/32]`), `X.scales` and `X.biases`
//! (`[.., out, in/group_size]`, float). This checks every such triple.

// `Problem` is large (it carries the precise location), but it is built once, on the path
// that ends verification; boxing it would only obscure the fields callers read.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;

use crate::problem::{Problem, ProblemKind, Summary};
use crate::safetensors::{self, SafeTensors, TensorEntry};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantization {
    pub bits: u64,
    pub group_size: u64,
    /// "affine" (scales and biases) or e.g. "mxfp4" (scales only).
    pub mode: String,
    /// Per-module settings: `None` = that module is not quantized.
    pub overrides: HashMap<String, Option<(u64, u64)>>,
}

fn bad_config(msg: String) -> Problem {
    Problem::new(ProblemKind::BadConfig, msg).in_file("config.json")
}

fn bits_and_group(v: &serde_json::Value, at: &str) -> Result<(u64, u64), Problem> {
    let bits = v.get("bits").and_then(|b| b.as_u64());
    let gs = v.get("group_size").and_then(|b| b.as_u64());
    match (bits, gs) {
        (Some(b @ (2 | 3 | 4 | 5 | 6 | 8)), Some(g)) if g > 0 && g <= 1 << 20 => Ok((b, g)),
        _ => Err(bad_config(format!(
            "{at} needs bits in 2,3,4,5,6,8 and a positive group_size; found bits {bits:?}, group_size {gs:?}"
        ))),
    }
}

/// The MLX quantization settings of a `config.json`: `None` when the model is not an MLX
/// quantized one; `Some(Err)` when the settings are malformed.
pub fn quantization_of(config: &serde_json::Value) -> Option<Result<Quantization, Problem>> {
    let q = match config.get("quantization") {
        Some(q) => q,
        // Newer mlx-lm writes both keys; other quantizers (GPTQ, AWQ) use quantization_config
        // with a quant_method, and are not MLX.
        None => match config.get("quantization_config") {
            Some(q) if q.get("quant_method").is_none() && q.get("bits").is_some() => q,
            _ => return None,
        },
    };
    Some(parse_quantization(q))
}

fn parse_quantization(q: &serde_json::Value) -> Result<Quantization, Problem> {
    let obj = q
        .as_object()
        .ok_or_else(|| bad_config("\"quantization\" is not an object".into()))?;
    let (bits, group_size) = bits_and_group(q, "\"quantization\"")?;
    let mode = obj
        .get("mode")
        .and_then(|m| m.as_str())
        .unwrap_or("affine")
        .to_string();
    let mut overrides = HashMap::new();
    for (k, v) in obj {
        match v {
            serde_json::Value::Object(_) => {
                overrides.insert(
                    k.clone(),
                    Some(bits_and_group(v, &format!("quantization[{k:?}]"))?),
                );
            }
            serde_json::Value::Bool(false) => {
                overrides.insert(k.clone(), None);
            }
            _ => {}
        }
    }
    Ok(Quantization {
        bits,
        group_size,
        mode,
        overrides,
    })
}

/// Checks every quantized weight's `scales` and `biases` against `q`.
pub fn check(set: &[SafeTensors], q: &Quantization) -> Result<(), Problem> {
    let mut by_name: HashMap<&str, (&TensorEntry, &SafeTensors)> = HashMap::new();
    for st in set {
        for t in &st.tensors {
            by_name.insert(&t.name, (t, st));
        }
    }
    let mut names: Vec<&&str> = by_name.keys().collect();
    names.sort();
    for name in names {
        let Some(&(t, st)) = by_name.get(*name) else {
            continue;
        };
        let at = st.data_start.saturating_add(t.begin);
        let mismatch = |tensor: &str, msg: String, expected: String, found: String| {
            Problem::new(ProblemKind::MlxMismatch, msg)
                .tensor(tensor)
                .at(at)
                .expected(expected)
                .found(found)
                .in_file(st.file.clone())
        };
        let Some(prefix) = name.strip_suffix(".weight") else {
            continue;
        };
        let scales = by_name.get(format!("{prefix}.scales").as_str()).copied();
        if t.dtype != "U32" {
            if scales.is_some() {
                return Err(mismatch(
                    name,
                    format!(
                        "{name} has scales, so it should be packed uint32, but it is {}",
                        t.dtype
                    ),
                    "U32".into(),
                    t.dtype.clone(),
                ));
            }
            continue;
        }
        let (bits, gs) = match q.overrides.get(prefix) {
            Some(Some(bg)) => *bg,
            Some(None) => {
                return Err(mismatch(
                    name,
                    format!(
                    "config.json says {prefix} is not quantized, but its weight is packed uint32"
                ),
                    "a float weight".into(),
                    "U32".into(),
                ))
            }
            None => (q.bits, q.group_size),
        };
        let Some((scales, s_st)) = scales else {
            return Err(mismatch(
                name,
                format!("{name} is packed uint32 but {prefix}.scales is missing"),
                format!("tensor {prefix}.scales"),
                "absent".into(),
            ));
        };
        let (packed, lead) = match t.shape.split_last() {
            Some((&p, lead)) if !lead.is_empty() => (p, lead),
            _ => {
                return Err(mismatch(
                    name,
                    format!("{name} should have at least 2 dimensions"),
                    "[.., out, in*bits/32]".into(),
                    format!("{:?}", t.shape),
                ))
            }
        };
        let unpacked = packed.checked_mul(32).filter(|x| x % bits == 0);
        let Some(in_features) = unpacked.map(|x| x / bits) else {
            return Err(mismatch(
                name,
                format!("{name}: {packed} uint32 columns do not hold a whole number of {bits}-bit values"),
                format!("columns * 32 divisible by {bits}"),
                packed.to_string(),
            ));
        };
        if in_features % gs != 0 {
            return Err(mismatch(
                name,
                format!(
                    "{name}: {in_features} input features are not a multiple of group_size {gs}"
                ),
                format!("a multiple of {gs}"),
                in_features.to_string(),
            ));
        }
        let mut want: Vec<u64> = lead.to_vec();
        want.push(in_features / gs);
        let s_at = s_st.data_start.saturating_add(scales.begin);
        if scales.shape != want {
            return Err(Problem::new(
                ProblemKind::MlxMismatch,
                format!(
                    "{prefix}.scales has shape {:?}; weight {:?} at {bits} bits, group {gs} needs {want:?}",
                    scales.shape, t.shape
                ),
            )
            .tensor(format!("{prefix}.scales"))
            .at(s_at)
            .expected(format!("{want:?}"))
            .found(format!("{:?}", scales.shape))
            .in_file(s_st.file.clone()));
        }
        if !matches!(scales.dtype.as_str(), "F16" | "BF16" | "F32") && q.mode == "affine" {
            return Err(Problem::new(
                ProblemKind::MlxMismatch,
                format!("{prefix}.scales is {}, expected a float type", scales.dtype),
            )
            .tensor(format!("{prefix}.scales"))
            .at(s_at)
            .expected("F16, BF16 or F32")
            .found(scales.dtype.clone())
            .in_file(s_st.file.clone()));
        }
        if q.mode == "affine" {
            let Some(&(biases, b_st)) = by_name.get(format!("{prefix}.biases").as_str()) else {
                return Err(mismatch(
                    name,
                    format!("{name} is affine-quantized but {prefix}.biases is missing"),
                    format!("tensor {prefix}.biases"),
                    "absent".into(),
                ));
            };
            if biases.shape != scales.shape || biases.dtype != scales.dtype {
                return Err(Problem::new(
                    ProblemKind::MlxMismatch,
                    format!(
                        "{prefix}.biases is {} {:?} but {prefix}.scales is {} {:?}",
                        biases.dtype, biases.shape, scales.dtype, scales.shape
                    ),
                )
                .tensor(format!("{prefix}.biases"))
                .at(b_st.data_start.saturating_add(biases.begin))
                .expected(format!("{} {:?}", scales.dtype, scales.shape))
                .found(format!("{} {:?}", biases.dtype, biases.shape))
                .in_file(b_st.file.clone()));
            }
        }
    }
    // Scales whose weight is missing.
    for st in set {
        for t in &st.tensors {
            if let Some(prefix) = t.name.strip_suffix(".scales") {
                if !by_name.contains_key(format!("{prefix}.weight").as_str()) {
                    return Err(Problem::new(
                        ProblemKind::MlxMismatch,
                        format!("{} has no {prefix}.weight", t.name),
                    )
                    .tensor(&t.name)
                    .at(st.data_start.saturating_add(t.begin))
                    .in_file(st.file.clone()));
                }
            }
        }
    }
    Ok(())
}

/// What an MLX model is: parameters count unpacked weights and leave out scales and biases.
pub fn summarize(
    set: &[SafeTensors],
    config: Option<&serde_json::Value>,
    q: &Quantization,
    context: u32,
) -> Summary {
    let mut s = safetensors::summarize(set, config, context);
    let quantized: std::collections::HashSet<&str> = set
        .iter()
        .flat_map(|st| st.tensors.iter())
        .filter(|t| t.dtype == "U32")
        .filter_map(|t| t.name.strip_suffix(".weight"))
        .collect();
    let mut params = 0u64;
    for st in set {
        for t in &st.tensors {
            let aux = t
                .name
                .strip_suffix(".scales")
                .or_else(|| t.name.strip_suffix(".biases"));
            if aux.is_some_and(|p| quantized.contains(p)) {
                continue;
            }
            let n = if t.dtype == "U32" && t.name.ends_with(".weight") {
                let bits = match q.overrides.get(t.name.trim_end_matches(".weight")) {
                    Some(Some((b, _))) => *b,
                    _ => q.bits,
                };
                t.n_elements.saturating_mul(32) / bits
            } else {
                t.n_elements
            };
            params = params.saturating_add(n);
        }
    }
    s.parameter_count = params;
    s.quantization = format!("MLX {}-bit {} (group {})", q.bits, q.mode, q.group_size);
    s
}
