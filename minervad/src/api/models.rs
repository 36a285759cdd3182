//! ModelService: list, show, load, unload, pull (catalog and Hugging Face), remove.

use std::pin::Pin;
use std::sync::Arc;

use minerva_core::{ModelFormat, ModelInfo};
use minerva_proto::v1 as pb;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::keep_alive_of;
use crate::convert::requested_options;
use crate::engine::{Engine, LoadedModel};
use crate::error::DaemonError;
use crate::store::{ResolvedModel, StoreListing};

pub(crate) struct ModelApi {
    pub(crate) engine: Arc<Engine>,
}

/// Details of a model, loaded or not.
pub(crate) fn details(
    resolved: &ResolvedModel,
    info: &ModelInfo,
    loaded: Option<&LoadedModel>,
    backend: &str,
    default_ctx: u32,
) -> pb::ModelDetails {
    let ctx = match loaded {
        Some(m) => m.context_options.context_length,
        None if info.trained_context_length > 0 => default_ctx.min(info.trained_context_length),
        None => default_ctx,
    };
    let (remaining, forever) = loaded.map_or((None, false), |m| m.keep_alive_remaining());
    pb::ModelDetails {
        name: resolved.name.clone(),
        path: resolved.path.display().to_string(),
        format: info.format.as_str().into(),
        architecture: info.architecture.clone(),
        parameter_count: info.parameter_count,
        quantization: info.quantization.clone(),
        context_length: info.trained_context_length,
        file_size_bytes: info.file_size_bytes,
        estimated_memory_bytes: info.estimated_memory_bytes(ctx),
        estimated_for_context: ctx,
        loaded: loaded.is_some(),
        keep_alive_remaining_seconds: remaining,
        keep_alive_forever: forever,
        vocab_size: info.vocab_size,
        layer_count: info.layer_count,
        embedding_length: info.embedding_length,
        head_count: info.head_count,
        head_count_kv: info.head_count_kv,
        has_chat_template: info.chat_template.is_some(),
        source: resolved.source.clone(),
        backend: backend.into(),
        loaded_options: loaded.map(|m| pb::LoadOptions {
            threads: Some(m.context_options.threads),
            context_length: Some(m.context_options.context_length),
            gpu_layers: Some(m.load_options.gpu_layers),
            backend: Some(m.model.backend().into()),
            draft_model: Some(m.draft.as_ref().map_or(String::new(), |d| d.name.clone())),
        }),
        draft: loaded
            .and_then(|m| m.draft.as_ref())
            .map(crate::convert::draft_to_proto),
    }
}

pub(crate) fn loaded_details(engine: &Engine, m: &LoadedModel) -> pb::ModelDetails {
    details(
        &m.resolved,
        m.info(),
        Some(m),
        m.model.backend(),
        engine.config().context_length,
    )
}

/// Details for a model that may not be loaded: read from the file's header.
async fn show(engine: &Engine, name: &str) -> Result<pb::ModelDetails, DaemonError> {
    let resolved = engine.store().resolve(name)?;
    if let Some(m) = engine.loaded_at(&resolved.path) {
        let mut d = loaded_details(engine, &m);
        d.name = resolved.name;
        return Ok(d);
    }
    let path = resolved.path.clone();
    let info = tokio::task::spawn_blocking(move || unloaded_info(&path))
        .await
        .map_err(|e| DaemonError::Internal(e.to_string()))??;
    Ok(details(
        &resolved,
        &info,
        None,
        engine.default_backend_name(info.format),
        engine.config().context_length,
    ))
}

/// What a model's files say about it without loading it.
fn unloaded_info(path: &std::path::Path) -> Result<ModelInfo, DaemonError> {
    let files = minerva_core::ModelFiles::open(path).map_err(minerva_core::CoreError::from)?;
    Ok(files.info())
}

fn listing_details(l: &StoreListing) -> pb::ModelDetails {
    pb::ModelDetails {
        name: l.name.clone(),
        path: l.path.display().to_string(),
        // A folder is a safetensors (or MLX) repository from the Hugging Face cache.
        format: if l.path.is_dir() {
            "safetensors".into()
        } else {
            ModelFormat::Gguf.as_str().into()
        },
        file_size_bytes: l.size_bytes,
        source: if l.pulled {
            l.source.clone()
        } else {
            format!("{} (not pulled)", l.source)
        },
        ..Default::default()
    }
}

impl ModelApi {
    /// A Hugging Face pull: async downloads on the daemon's runtime, progress streamed.
    fn pull_hub(
        &self,
        name: String,
        hub_ref: crate::hub::HubRef,
    ) -> Result<Response<PullStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<pb::PullProgress, Status>>();
        let engine = Arc::clone(&self.engine);
        tokio::spawn(async move {
            let store = Arc::clone(engine.store());
            let progress_tx = tx.clone();
            let result = match store.hub() {
                Ok(hub) => {
                    hub.pull(&hub_ref, &mut |ev| {
                        let _ = progress_tx.send(Ok(in_progress(ev)));
                    })
                    .await
                }
                Err(e) => Err(e),
            };
            let last = match result {
                // A whole repository: the store's listing of its snapshot folder.
                Ok(path) if path.is_dir() => store
                    .list()
                    .into_iter()
                    .find(|l| l.path == path)
                    .map(|l| {
                        let mut d = listing_details(&l);
                        d.name = name.clone();
                        pulled(d)
                    })
                    .ok_or_else(|| {
                        DaemonError::Internal(format!(
                            "{} is not listed after its pull",
                            path.display()
                        ))
                    }),
                Ok(_) => show(&engine, &name).await.map(pulled),
                Err(e) => Err(e),
            };
            let _ = tx.send(last.map_err(Status::from));
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        )))
    }
}

/// A message of a pull under way.
fn in_progress(ev: crate::pull::PullEvent) -> pb::PullProgress {
    pb::PullProgress {
        phase: ev.phase.into(),
        completed_bytes: ev.completed,
        total_bytes: ev.total,
        message: ev.message,
        done: None,
    }
}

/// The last message of a pull: the model as the store now has it.
fn pulled(d: pb::ModelDetails) -> pb::PullProgress {
    pb::PullProgress {
        phase: crate::pull::PullPhase::Done.as_str().into(),
        completed_bytes: d.file_size_bytes,
        total_bytes: d.file_size_bytes,
        message: "pulled and verified".into(),
        done: Some(d),
    }
}

type PullStream = Pin<Box<dyn Stream<Item = Result<pb::PullProgress, Status>> + Send>>;

#[tonic::async_trait]
impl pb::model_service_server::ModelService for ModelApi {
    async fn list(
        &self,
        _: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let engine = &self.engine;
        let mut models = Vec::new();
        let loaded = engine.loaded_models();
        for l in engine.store().list() {
            if let Some(m) = loaded.iter().find(|m| m.resolved.path == l.path) {
                let mut d = loaded_details(engine, m);
                d.name = l.name.clone();
                models.push(d);
            } else if l.pulled && !l.path.is_dir() {
                match show(engine, &l.name).await {
                    Ok(d) => models.push(d),
                    Err(e) => {
                        let mut d = listing_details(&l);
                        d.source = format!("{} (unreadable: {e})", d.source);
                        models.push(d);
                    }
                }
            } else {
                models.push(listing_details(&l));
            }
        }
        for m in loaded {
            if !models
                .iter()
                .any(|d| d.path == m.resolved.path.display().to_string())
            {
                models.push(loaded_details(engine, &m));
            }
        }
        Ok(Response::new(pb::ListModelsResponse { models }))
    }

    async fn show(
        &self,
        req: Request<pb::ShowModelRequest>,
    ) -> Result<Response<pb::ModelDetails>, Status> {
        Ok(Response::new(
            show(&self.engine, &req.into_inner().model).await?,
        ))
    }

    async fn load(
        &self,
        req: Request<pb::LoadModelRequest>,
    ) -> Result<Response<pb::LoadModelResponse>, Status> {
        let req = req.into_inner();
        let keep_alive = keep_alive_of(req.keep_alive_seconds)?;
        let (lease, load_ms) = self
            .engine
            .acquire(
                &req.model,
                requested_options(req.options.as_ref())?,
                keep_alive,
            )
            .await?;
        let mut model = loaded_details(&self.engine, lease.model());
        model.name = req.model;
        drop(lease);
        Ok(Response::new(pb::LoadModelResponse {
            model: Some(model),
            loaded_now: load_ms.is_some(),
            load_ms: load_ms.unwrap_or(0.0),
        }))
    }

    async fn unload(
        &self,
        req: Request<pb::UnloadModelRequest>,
    ) -> Result<Response<pb::UnloadModelResponse>, Status> {
        let unloaded = self.engine.unload(&req.into_inner().model)?;
        Ok(Response::new(pb::UnloadModelResponse { unloaded }))
    }

    type PullStream = PullStream;

    async fn remove(
        &self,
        req: Request<pb::RemoveModelRequest>,
    ) -> Result<Response<pb::RemoveModelResponse>, Status> {
        let name = req.into_inner().model;
        let store = Arc::clone(self.engine.store());
        let resolved = store.resolve(&name)?;
        let loaded = self.engine.loaded_models();
        if loaded
            .iter()
            .any(|m| m.resolved.path.starts_with(&resolved.path))
        {
            return Err(DaemonError::ModelLoaded { name }.into());
        }
        let freed_bytes = tokio::task::spawn_blocking(move || store.remove(&name))
            .await
            .map_err(|e| DaemonError::Internal(format!("remove task failed: {e}")))??;
        Ok(Response::new(pb::RemoveModelResponse { freed_bytes }))
    }

    async fn verify(
        &self,
        req: Request<pb::VerifyModelRequest>,
    ) -> Result<Response<pb::VerifyModelResponse>, Status> {
        Ok(Response::new(
            verify_model(&self.engine, &req.into_inner().model).await?,
        ))
    }

    async fn pull(
        &self,
        req: Request<pb::PullModelRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let name = req.into_inner().model;
        if let Some(hub_ref) = crate::hub::HubRef::parse(&name) {
            return self.pull_hub(name, hub_ref?);
        }
        if crate::store::catalog_entry(&name).is_none() {
            return Err(DaemonError::UnknownModel {
                name,
                known: crate::store::CATALOG
                    .iter()
                    .map(|e| e.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            }
            .into());
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<pb::PullProgress, Status>>();
        let engine = Arc::clone(&self.engine);
        tokio::spawn(async move {
            let store = Arc::clone(engine.store());
            let progress_tx = tx.clone();
            let pulled_name = name.clone();
            let result = tokio::task::spawn_blocking(move || {
                let mut last_sent = std::time::Instant::now() - std::time::Duration::from_secs(1);
                store.pull(&pulled_name, &mut |ev| {
                    // Byte-level events are many: send at most ~20 a second, and every
                    // phase boundary.
                    let boundary =
                        ev.completed == 0 || ev.completed == ev.total || !ev.message.is_empty();
                    if boundary || last_sent.elapsed().as_millis() >= 50 {
                        last_sent = std::time::Instant::now();
                        let _ = progress_tx.send(Ok(in_progress(ev)));
                    }
                })
            })
            .await;
            let last = match result {
                Ok(Ok(_)) => show(&engine, &name).await.map(pulled),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(DaemonError::Internal(format!("pull task failed: {e}"))),
            };
            let _ = tx.send(last.map_err(Status::from));
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        )))
    }
}

/// Checks a model's files on a blocking thread. `model` is an existing file or folder, or a
/// store name. An invalid model is a report with `valid = false`, not an error: the caller
/// asked whether it is valid, and the answer carries the precise problem.
async fn verify_model(
    engine: &Engine,
    model: &str,
) -> Result<pb::VerifyModelResponse, DaemonError> {
    let given = std::path::Path::new(model);
    let path = if !model.trim().is_empty() && given.exists() {
        given
            .canonicalize()
            .map_err(|source| minerva_core::CoreError::Io {
                path: given.to_path_buf(),
                source,
            })?
    } else {
        engine.store().resolve(model)?.path
    };
    let context = engine.config().context_length;
    let report = tokio::task::spawn_blocking(move || {
        minerva_formats::verify::verify_path_with_context(&path, context)
    })
    .await
    .map_err(|e| DaemonError::Internal(format!("verify task failed: {e}")))?
    .map_err(|e| match e {
        minerva_formats::verify::VerifyError::NotFound { path } => {
            DaemonError::Core(minerva_core::CoreError::FileNotFound { path })
        }
        minerva_formats::verify::VerifyError::Io { path, source } => {
            DaemonError::Core(minerva_core::CoreError::Io { path, source })
        }
    })?;
    let s = report.summary;
    Ok(pb::VerifyModelResponse {
        path: report.path,
        format: report.format,
        valid: report.valid,
        error: report.error.map(|p| pb::VerifyProblem {
            kind: p.kind.as_str().into(),
            message: p.message,
            file: p.file,
            tensor: p.tensor,
            offset: p.offset,
            expected: p.expected,
            found: p.found,
        }),
        files: report.files,
        architecture: s.architecture,
        parameter_count: s.parameter_count,
        quantization: s.quantization,
        context_length: s.context_length,
        tensor_count: s.tensor_count,
        file_size_bytes: s.file_size_bytes,
        estimated_memory_bytes: s.estimated_memory_bytes,
        estimated_for_context: s.estimated_for_context,
        notes: report.notes,
    })
}
