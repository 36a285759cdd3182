//! BenchmarkService: submit, watch, get, list, cancel.

use std::pin::Pin;
use std::sync::Arc;

use minerva_proto::v1 as pb;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::bench::BenchJobs;

pub(crate) struct BenchApi {
    pub(crate) jobs: Arc<BenchJobs>,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::BenchProgress, Status>> + Send>>;

#[tonic::async_trait]
impl pb::benchmark_service_server::BenchmarkService for BenchApi {
    async fn submit(
        &self,
        req: Request<pb::BenchJobSpec>,
    ) -> Result<Response<pb::BenchJobRef>, Status> {
        let id = self.jobs.submit(req.into_inner())?;
        Ok(Response::new(pb::BenchJobRef { id }))
    }

    type PerplexityStream =
        Pin<Box<dyn Stream<Item = Result<pb::PerplexityProgress, Status>> + Send>>;

    async fn perplexity(
        &self,
        req: Request<pb::PerplexityRequest>,
    ) -> Result<Response<Self::PerplexityStream>, Status> {
        use crate::engine::perplexity::{PerplexityEvent, PerplexityJob};
        use crate::error::DaemonError;
        let req = req.into_inner();
        if req.text.trim().is_empty() {
            return Err(DaemonError::invalid("text", "the text is empty").into());
        }
        let chunk = req.chunk_tokens.unwrap_or(512);
        let engine = self.jobs.engine();
        let (lease, _) = engine
            .acquire(
                &req.model,
                crate::convert::requested_options(req.options.as_ref())?,
                None,
            )
            .await?;
        let ctx = lease.model().context_options.context_length;
        if chunk < 16 || chunk > ctx {
            return Err(DaemonError::invalid(
                "chunk_tokens",
                format!("{chunk} is not in 16..={ctx} (the loaded context)"),
            )
            .into());
        }
        let model = std::sync::Arc::clone(lease.model());
        let text = req.text;
        let tokens = tokio::task::spawn_blocking(move || model.model.tokenize(&text, true))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(DaemonError::from)?;
        if tokens.len() < chunk as usize {
            return Err(DaemonError::invalid(
                "text",
                format!(
                    "the text is {} tokens; perplexity needs at least one chunk of {chunk}",
                    tokens.len()
                ),
            )
            .into());
        }
        let text_tokens = tokens.len() as u32;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let model = std::sync::Arc::clone(lease.model());
        model.submit_perplexity(PerplexityJob {
            tokens,
            chunk,
            events: tx,
            lease,
        })?;
        let stream = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
            move |ev| {
                let (s, done) = match ev {
                    PerplexityEvent::Progress(s) => (s, false),
                    PerplexityEvent::Done(s) => (s, true),
                    PerplexityEvent::Error(e) => return Err(Status::from(e)),
                };
                Ok(pb::PerplexityProgress {
                    chunks_done: s.chunks_done,
                    chunks_total: s.chunks_total,
                    tokens_scored: s.tokens_scored,
                    perplexity: s.perplexity,
                    elapsed_ms: s.elapsed_ms,
                    chunk_tokens: chunk,
                    text_tokens,
                    done,
                })
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<pb::BenchJobRef>) -> Result<Response<WatchStream>, Status> {
        let id = req.into_inner().id;
        let stream: WatchStream = match self.jobs.watch(&id)? {
            Err(saved) => Box::pin(tokio_stream::once(Ok(pb::BenchProgress {
                id,
                message: saved.status.clone(),
                done: Some(saved),
                ..Default::default()
            }))),
            Ok(mut rx) => Box::pin(async_stream(move |tx| async move {
                loop {
                    let p = rx.borrow_and_update().clone();
                    let finished = p.done.is_some();
                    if tx.send(Ok(p)).await.is_err() || finished {
                        return;
                    }
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            })),
        };
        Ok(Response::new(stream))
    }

    async fn get(
        &self,
        req: Request<pb::BenchJobRef>,
    ) -> Result<Response<pb::BenchResult>, Status> {
        Ok(Response::new(self.jobs.get(&req.into_inner().id)?))
    }

    async fn list(
        &self,
        _: Request<pb::ListBenchJobsRequest>,
    ) -> Result<Response<pb::ListBenchJobsResponse>, Status> {
        Ok(Response::new(pb::ListBenchJobsResponse {
            jobs: self.jobs.list(),
        }))
    }

    async fn cancel(
        &self,
        req: Request<pb::BenchJobRef>,
    ) -> Result<Response<pb::CancelBenchJobResponse>, Status> {
        let cancelled = self.jobs.cancel(&req.into_inner().id)?;
        Ok(Response::new(pb::CancelBenchJobResponse { cancelled }))
    }
}

/// A stream fed by a task through a small channel (the task stops when the client goes).
fn async_stream<F, Fut>(
    f: F,
) -> tokio_stream::wrappers::ReceiverStream<Result<pb::BenchProgress, Status>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::BenchProgress, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
