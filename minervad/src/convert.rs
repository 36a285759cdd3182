//! Conversions from wire messages to the daemon's own types, used by both the gRPC services
//! ([`crate::api`]) and benchmark jobs ([`crate::bench`]); kept here so neither needs the other.

use minerva_proto::v1 as pb;

use crate::engine::RequestedOptions;
use crate::error::Result;

/// A request's `LoadOptions` as the engine takes them (none given: the defaults).
pub(crate) fn requested_options(o: Option<&pb::LoadOptions>) -> Result<RequestedOptions> {
    let Some(o) = o else {
        return Ok(RequestedOptions::default());
    };
    Ok(RequestedOptions {
        threads: o.threads,
        context_length: o.context_length,
        gpu_layers: o.gpu_layers,
        backend: o
            .backend
            .as_deref()
            .filter(|b| !b.is_empty())
            .map(crate::engine::backend_id)
            .transpose()?,
        draft_model: o.draft_model.clone(),
    })
}

/// A loaded model's draft model, as ModelDetails and benchmark records report it.
pub(crate) fn draft_to_proto(d: &crate::engine::DraftDetails) -> pb::DraftDetails {
    pb::DraftDetails {
        name: d.name.clone(),
        path: d.path.display().to_string(),
        backend: d.backend.into(),
        quantization: d.quantization.clone(),
        parameter_count: d.parameter_count,
    }
}
