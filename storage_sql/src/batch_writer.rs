//! [`BatchWriter`]: one kind of write (requests, replies, execution upserts) shared by
//! concurrent callers, so N callers waiting at once cost one statement and one commit.
//!
//! The writer is whichever caller finds it idle (a leader): it writes its own item at
//! once, on its own task, as a batch of one — so a lone caller pays no hop to another task
//! and back. Callers arriving while a write is in the database queue their item and wait
//! for their answer. When the leader's write is done (or its future is dropped), it hands
//! over: if items are queued, a drain task is spawned that writes them as batches (at most
//! [`MAX_BATCH`] each) until the queue is empty, then the writer is idle again.
//!
//! What it must never do:
//! * hold its lock across an await (the lock only guards the queue and the busy flag);
//! * leave callers waiting forever: a leader dropped mid-write still hands over (its
//!   guard's `Drop`), and a drain task that ends early (its runtime shut down) answers the
//!   callers still queued [`Answer::RunAlone`] by dropping their senders, so they write on
//!   the direct path.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::pool::SqlPool;

/// The most writes one batch (one statement or transaction) carries.
pub(crate) const MAX_BATCH: usize = 256;

/// What a caller hears back from a writer.
pub(crate) enum Answer<T> {
    /// The write ran (alone or in a batch that committed): its own result.
    Done(Result<T, sqlx::Error>),
    /// Nothing was written for this caller (its batch failed, or group commit is not
    /// running): the caller runs its write on the direct path.
    RunAlone,
}

/// Writes one batch and answers each of its callers (through [`answer_all`] or each
/// item's sender): a function of the kind of write, boxed so a drain task can be spawned
/// with it.
pub(crate) type WriteBatch<I, T> = for<'a> fn(
    &'a SqlPool,
    &'a mut Vec<Queued<I, T>>,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// A write waiting for its writer, and where to send its answer.
pub(crate) struct Queued<I, T> {
    pub(crate) item: I,
    pub(crate) answer: oneshot::Sender<Answer<T>>,
}

/// The queue and whether a write is in the database.
struct Queue<I, T> {
    busy: bool,
    waiting: Vec<Queued<I, T>>,
}

/// One kind of write's queue; see the module docs.
pub(crate) struct BatchWriter<I, T> {
    queue: Arc<Mutex<Queue<I, T>>>,
}

impl<I, T> BatchWriter<I, T>
where
    I: Send + 'static,
    T: Send + 'static,
{
    /// An idle writer.
    pub(crate) fn new() -> Self {
        BatchWriter {
            queue: Arc::new(Mutex::new(Queue {
                busy: false,
                waiting: Vec::new(),
            })),
        }
    }

    /// Writes `item` with `write` on `pool`: at once when the writer is idle, else with
    /// whatever else is waiting once the write in the database is done.
    pub(crate) async fn submit(
        &self,
        pool: &SqlPool,
        item: I,
        write: WriteBatch<I, T>,
    ) -> Answer<T> {
        let (answer, answered) = oneshot::channel();
        let queued = Queued { item, answer };
        // `Some` for the leader: the writer was idle, and its own item goes out at once.
        let lead = {
            let mut queue = self.queue.lock();
            if queue.busy {
                queue.waiting.push(queued);
                None
            } else {
                queue.busy = true;
                Some(queued)
            }
        };
        if let Some(queued) = lead {
            // The guard hands over even if this future is dropped mid-write.
            let hand_over = HandOver {
                queue: self.queue.clone(),
                pool: pool.clone(),
                write,
            };
            let mut batch = vec![queued];
            write(pool, &mut batch).await;
            drop(hand_over);
        }
        answered.await.unwrap_or(Answer::RunAlone)
    }
}

impl<I, T> fmt::Debug for BatchWriter<I, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let queue = self.queue.lock();
        f.debug_struct("BatchWriter")
            .field("busy", &queue.busy)
            .field("waiting", &queue.waiting.len())
            .finish()
    }
}

/// Passes the writer on when its leader is done: to a drain task when items are queued,
/// else back to idle.
struct HandOver<I: Send + 'static, T: Send + 'static> {
    queue: Arc<Mutex<Queue<I, T>>>,
    pool: SqlPool,
    write: WriteBatch<I, T>,
}

impl<I: Send + 'static, T: Send + 'static> Drop for HandOver<I, T> {
    fn drop(&mut self) {
        let mut queue = self.queue.lock();
        if queue.waiting.is_empty() {
            queue.busy = false;
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                drop(queue);
                let drain = Drain {
                    queue: self.queue.clone(),
                    done: false,
                };
                runtime.spawn(drain.run(self.pool.clone(), self.write));
            }
            Err(_) => {
                // No runtime to write on: the waiting callers write alone.
                queue.waiting.clear();
                queue.busy = false;
            }
        }
    }
}

/// Writes what is queued, batch after batch, until the queue is empty. Dropped early (its
/// runtime shut down), it lets the waiting callers write alone and leaves the writer idle.
struct Drain<I, T> {
    queue: Arc<Mutex<Queue<I, T>>>,
    /// It emptied the queue and made the writer idle (a new leader may be writing since).
    done: bool,
}

impl<I, T> Drain<I, T> {
    async fn run(mut self, pool: SqlPool, write: WriteBatch<I, T>) {
        loop {
            let mut batch = {
                let mut queue = self.queue.lock();
                if queue.waiting.is_empty() {
                    queue.busy = false;
                    self.done = true;
                    return;
                }
                let take = queue.waiting.len().min(MAX_BATCH);
                queue.waiting.drain(..take).collect::<Vec<_>>()
            };
            write(&pool, &mut batch).await;
        }
    }
}

impl<I, T> Drop for Drain<I, T> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Ended before the queue was empty: nobody writes for the waiting callers.
        let mut queue = self.queue.lock();
        queue.waiting.clear();
        queue.busy = false;
    }
}

/// Answers every caller of the batch, in order, with `answer(position, item)`.
pub(crate) fn answer_all<I, T>(
    batch: &mut Vec<Queued<I, T>>,
    mut answer: impl FnMut(usize, &I) -> Answer<T>,
) {
    for (position, queued) in batch.drain(..).enumerate() {
        let reply = answer(position, &queued.item);
        // A caller that gave up waiting does not need its answer.
        let _ = queued.answer.send(reply);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Answers each item with itself after 50 ms (a write in the database).
    async fn slow_write(_pool: &SqlPool, batch: &mut Vec<Queued<u32, u32>>) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        answer_all(batch, |_, item| Answer::Done(Ok(*item)));
    }

    fn slow<'a>(
        pool: &'a SqlPool,
        batch: &'a mut Vec<Queued<u32, u32>>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(slow_write(pool, batch))
    }

    fn pool() -> SqlPool {
        #[cfg(feature = "sqlite")]
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .connect_lazy("sqlite::memory:")
            .unwrap()
            .into();
        #[cfg(not(feature = "sqlite"))]
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://unused@127.0.0.1:1/unused")
            .unwrap()
            .into();
        pool
    }

    fn written(answer: Answer<u32>) -> Option<u32> {
        match answer {
            Answer::Done(Ok(value)) => Some(value),
            _ => None,
        }
    }

    /// Submits items to `writer`, each from a task of its own.
    fn submitter(
        writer: &Arc<BatchWriter<u32, u32>>,
    ) -> impl Fn(u32) -> tokio::task::JoinHandle<Answer<u32>> {
        let (writer, pool) = (writer.clone(), pool());
        move |item| {
            let (writer, pool) = (writer.clone(), pool.clone());
            tokio::spawn(async move { writer.submit(&pool, item, slow).await })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn queued_writes_go_out_together_after_the_leader() {
        let writer = Arc::new(BatchWriter::new());
        let submit = submitter(&writer);
        let leader = submit(1);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let queued: Vec<_> = (2..5).map(submit).collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            writer.queue.lock().waiting.len(),
            3,
            "queued behind the leader"
        );
        assert_eq!(written(leader.await.unwrap()), Some(1));
        for (task, item) in queued.into_iter().zip(2..) {
            assert_eq!(written(task.await.unwrap()), Some(item));
        }
        let queue = writer.queue.lock();
        assert!(!queue.busy && queue.waiting.is_empty(), "idle again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_dropped_mid_write_still_hands_over() {
        let writer = Arc::new(BatchWriter::new());
        let submit = submitter(&writer);
        let leader = submit(1);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let follower = submit(2);
        tokio::time::sleep(Duration::from_millis(10)).await;
        leader.abort();
        assert!(matches!(leader.await, Err(err) if err.is_cancelled()));
        assert_eq!(
            written(follower.await.unwrap()),
            Some(2),
            "the queued write went out without its leader"
        );
        assert_eq!(written(submit(3).await.unwrap()), Some(3), "idle again");
    }
}
