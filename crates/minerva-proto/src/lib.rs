//! Minerva's gRPC API, package `minerva.v1`: generated types, clients and servers.
//!
//! Messages derive `serde::Serialize` so the CLI's `--json` output uses the same field names as
//! the wire format.

pub mod addr;
pub mod scenarios;

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("minerva.v1");
}

/// Encoded `FileDescriptorSet` of every Minerva proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/minerva_descriptor.bin"));

/// Serializes `GenerationStats.stop_reason` by name ("eos", "max_tokens", ...) instead of number.
fn serialize_stop_reason<S: serde::Serializer>(value: &i32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(stop_reason_name(*value))
}

/// Short lowercase name of a `StopReason` value.
pub fn stop_reason_name(value: i32) -> &'static str {
    match v1::StopReason::try_from(value) {
        Ok(v1::StopReason::Eos) => "eos",
        Ok(v1::StopReason::MaxTokens) => "max_tokens",
        Ok(v1::StopReason::StopString) => "stop_string",
        Ok(v1::StopReason::ContextFull) => "context_full",
        Ok(v1::StopReason::StopToken) => "stop_token",
        Ok(v1::StopReason::Aborted) => "aborted",
        Ok(v1::StopReason::Unspecified) | Err(_) => "unspecified",
    }
}
