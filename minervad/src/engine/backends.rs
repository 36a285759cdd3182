//! Which backend runs a model: backends say which formats they serve; the daemon keeps only the
//! names and cargo features of those a build may lack.

use std::sync::Arc;

use minerva_core::{Backend, ModelFormat, Serves};

use super::Engine;
use crate::error::{DaemonError, Result};

/// A backend minervad can be built with. Backends describe themselves ([`Backend::formats`]);
/// this list only names those a build may lack, so a request for one is told which cargo
/// feature brings it in rather than "unknown backend".
struct KnownBackend {
    id: &'static str,
    feature: &'static str,
    /// Other spellings requests use (compared after lower-casing and turning - and _ into .).
    aliases: &'static [&'static str],
}

const KNOWN_BACKENDS: &[KnownBackend] = &[
    KnownBackend {
        id: "llama.cpp",
        feature: "llamacpp",
        aliases: &["llamacpp", "llama"],
    },
    KnownBackend {
        id: "candle",
        feature: "candle",
        aliases: &["rust"],
    },
    KnownBackend {
        id: "mlx",
        feature: "mlx",
        aliases: &[],
    },
];

/// The canonical id of a backend as a request spells it ("llamacpp", "llama-cpp" and
/// "llama.cpp" are one backend).
pub(crate) fn backend_id(name: &str) -> Result<&'static str> {
    let n = name.trim().to_ascii_lowercase().replace(['-', '_'], ".");
    KNOWN_BACKENDS
        .iter()
        .find(|k| k.id == n || k.aliases.contains(&n.as_str()))
        .map(|k| k.id)
        .ok_or_else(|| {
            let ids: Vec<&str> = KNOWN_BACKENDS.iter().map(|k| k.id).collect();
            DaemonError::invalid(
                "options.backend",
                format!("unknown backend {name:?}; backends: {}", ids.join(", ")),
            )
        })
}

impl Engine {
    /// The backends this build has.
    pub(crate) fn backend_names(&self) -> Vec<&'static str> {
        self.backends.iter().map(|b| b.name()).collect()
    }

    /// How each backend was built, one per line.
    pub(crate) fn backend_build_info(&self) -> String {
        self.backends
            .iter()
            .map(|b| b.build_info())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The backend for a model of `format`: the requested one, or the first backend (in the
    /// daemon's order of preference) that serves the format by default.
    pub(crate) fn choose_backend(
        &self,
        format: ModelFormat,
        requested: Option<&'static str>,
    ) -> Result<Arc<dyn Backend>> {
        let serves = |b: &Arc<dyn Backend>| {
            b.formats()
                .iter()
                .find(|(f, _)| *f == format)
                .map(|(_, how)| *how)
        };
        if let Some(name) = requested {
            let b = self
                .backends
                .iter()
                .find(|b| b.name() == name)
                .ok_or_else(|| self.not_built(name))?;
            if serves(b).is_none() {
                return Err(DaemonError::invalid(
                    "options.backend",
                    format!("the {name} backend cannot run a {} model", format.as_str()),
                ));
            }
            return Ok(Arc::clone(b));
        }
        if let Some(b) = self
            .backends
            .iter()
            .find(|b| serves(b) == Some(Serves::ByDefault))
        {
            return Ok(Arc::clone(b));
        }
        let all: Vec<String> = KNOWN_BACKENDS
            .iter()
            .map(|k| format!("{} (cargo feature {:?})", k.id, k.feature))
            .collect();
        Err(DaemonError::FailedPrecondition(format!(
            "this minervad has no backend for {} models (it has: {}); backends it can be built with: {}",
            format.as_str(),
            self.backend_names().join(", "),
            all.join(", ")
        )))
    }

    fn not_built(&self, id: &str) -> DaemonError {
        let feature = KNOWN_BACKENDS
            .iter()
            .find(|k| k.id == id)
            .map_or(id, |k| k.feature);
        DaemonError::FailedPrecondition(format!(
            "this minervad was built without the {id} backend (cargo feature {feature:?}); it has: {}",
            self.backend_names().join(", ")
        ))
    }

    /// The backend name a model would load with (for listings of unloaded models).
    pub(crate) fn default_backend_name(&self, format: ModelFormat) -> &'static str {
        self.choose_backend(format, None)
            .map_or("none", |b| b.name())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::engine::{EngineConfig, KeepAlive};
    use crate::store::ModelStore;

    /// A daemon built without a backend names the missing cargo feature: checked here with an
    /// engine that has no backends, so it runs whatever features this build has.
    #[test]
    fn a_backend_this_build_lacks_is_a_failed_precondition() {
        let engine = Engine::new(
            Vec::new(),
            Arc::new(ModelStore::new(PathBuf::from("/nonexistent"))),
            EngineConfig {
                keep_alive: KeepAlive::Forever,
                max_queue: 1,
                threads: 1,
                context_length: 16,
                parallel: 1,
                gpu_layers: 0,
                kv_per_sequence: false,
                speculate: None,
            },
        );
        for format in [ModelFormat::Mlx, ModelFormat::SafeTensors] {
            let Err(DaemonError::FailedPrecondition(msg)) =
                engine.choose_backend(format, Some("mlx"))
            else {
                panic!("{format:?}: expected FailedPrecondition");
            };
            assert!(
                msg.contains("without the mlx backend (cargo feature \"mlx\")"),
                "{msg}"
            );
        }
        let Err(DaemonError::FailedPrecondition(msg)) =
            engine.choose_backend(ModelFormat::Mlx, None)
        else {
            panic!("expected FailedPrecondition");
        };
        assert!(msg.contains("mlx"), "{msg}");
    }
}
