//! BenchmarkService: submit, watch, get, list, cancel.

use std::pin::Pin;
use std::sync::Arc;

use minerva_proto::v1 as pb;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::bench::BenchJobs;

pub struct BenchApi {
    pub jobs: Arc<BenchJobs>,
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
