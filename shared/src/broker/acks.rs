//! Consumer acknowledgements coalesced into one `multiple` ack per batch.
//!
//! Each acknowledgement frame costs RabbitMQ about as much CPU as a third of a delivery, so the
//! consumer acknowledges up to [`ACK_BATCH`] deliveries with one frame, or whatever is ready
//! after [`ACK_DELAY`]. Delaying an acknowledgement never loses a task: an unacknowledged
//! delivery is redelivered, and task writes are idempotent.
//!
//! A `multiple` ack on tag T acknowledges every outstanding delivery of the channel up to T, so
//! T must be chosen with care: every tag up to T must have been settled by the application,
//! including tags still buffered in another queue's consumer. Delivery tags count up from 1 on
//! each channel, so the batcher flushes only the longest run of settled tags above the last
//! flushed one. A requeued tag counts as settled, because RabbitMQ no longer holds it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Acker;

/// Acknowledgements sent with one frame at most.
pub(super) const ACK_BATCH: usize = 64;

/// Longest time an acknowledgement waits for others to join its frame.
pub(super) const ACK_DELAY: Duration = Duration::from_millis(2);

/// The acknowledgements of one consuming channel.
#[derive(Debug, Default)]
pub(super) struct AckBatcher {
    state: Mutex<AckState>,
    /// Held while a frame is chosen and sent, so that frames leave in tag order. A `multiple`
    /// ack overtaking an older one, or a nack it covers, would acknowledge a tag twice, and
    /// RabbitMQ closes the channel on that.
    sending: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct AckState {
    /// Lowest tag not yet flushed. Tags below it are settled at the broker.
    next_tag: u64,
    /// Tags at or above `next_tag` that the application settled: the acker for an ack still to
    /// send, `None` for a delivery already requeued.
    settled: BTreeMap<u64, Option<Acker>>,
    /// Acks recorded but not sent.
    unsent: usize,
    /// Whether a timer will flush soon.
    flush_scheduled: bool,
}

impl Default for AckState {
    fn default() -> Self {
        AckState { next_tag: 1, settled: BTreeMap::new(), unsent: 0, flush_scheduled: false }
    }
}

impl AckState {
    /// Takes the longest run of settled tags from `next_tag` and returns the acker of its last
    /// acknowledged tag, which a `multiple` ack covers the run with.
    fn take_flushable(&mut self) -> Option<Acker> {
        let mut last_ack = None;
        while let Some(entry) = self.settled.remove(&self.next_tag) {
            if let Some(acker) = entry {
                last_ack = Some(acker);
                self.unsent -= 1;
            }
            self.next_tag += 1;
        }
        last_ack
    }
}

impl AckBatcher {
    fn lock(&self) -> std::sync::MutexGuard<'_, AckState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records the acknowledgement of `tag` and sends a frame when the batch is full. Returns
    /// `false` when the tag was already settled.
    pub(super) async fn ack(self: &Arc<Self>, tag: u64, acker: Acker) -> lapin::Result<bool> {
        let batch_full = {
            let mut state = self.lock();
            if tag < state.next_tag || state.settled.contains_key(&tag) {
                return Ok(false);
            }
            state.settled.insert(tag, Some(acker));
            state.unsent += 1;
            state.unsent >= ACK_BATCH
        };
        if batch_full {
            self.flush().await?;
        } else {
            self.schedule_flush();
        }
        Ok(true)
    }

    /// Returns `tag` to its queue at once, and records it as settled.
    pub(super) async fn requeue(self: &Arc<Self>, tag: u64, acker: &Acker) -> lapin::Result<bool> {
        let sent = {
            let _sending = self.sending.lock().await;
            {
                // Recorded before the nack is sent, so that a concurrent ack of the same tag sees
                // it settled and never makes it the target of a `multiple` ack.
                let mut state = self.lock();
                if tag < state.next_tag || state.settled.contains_key(&tag) {
                    return Ok(false);
                }
                state.settled.insert(tag, None);
            }
            acker.nack(BasicNackOptions { multiple: false, requeue: true }).await?
        };
        // Acks of younger tags may have waited for this one.
        self.schedule_flush();
        Ok(sent)
    }

    /// Flushes after [`ACK_DELAY`] unless a flush is already scheduled or nothing waits.
    fn schedule_flush(self: &Arc<Self>) {
        {
            let mut state = self.lock();
            if state.flush_scheduled || state.unsent == 0 {
                return;
            }
            state.flush_scheduled = true;
        }
        let batcher = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(ACK_DELAY).await;
            batcher.lock().flush_scheduled = false;
            if let Err(error) = batcher.flush().await {
                tracing::warn!(%error, "failed to send a batch of acks; RabbitMQ delivers those messages again");
            }
        });
    }

    /// Sends one `multiple` ack for every acknowledgement that can be sent now.
    pub(super) async fn flush(&self) -> lapin::Result<()> {
        let _sending = self.sending.lock().await;
        let acker = self.lock().take_flushable();
        if let Some(acker) = acker {
            acker.ack(BasicAckOptions { multiple: true }).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with(settled: &[(u64, bool)]) -> AckState {
        let mut state = AckState::default();
        for (tag, acked) in settled {
            // A default acker has no channel: it stands in for the real one in these tests.
            let acker = lapin::message::Delivery::mock(*tag, "".into(), "".into(), false, Vec::new()).acker;
            state.settled.insert(*tag, acked.then_some(acker));
            state.unsent += usize::from(*acked);
        }
        state
    }

    #[test]
    fn flush_stops_at_first_unsettled_tag() {
        let mut state = state_with(&[(1, true), (2, true), (4, true)]);
        assert!(state.take_flushable().is_some());
        assert_eq!(state.next_tag, 3);
        assert_eq!(state.unsent, 1, "tag 4 waits for tag 3");
        assert!(state.take_flushable().is_none());
    }

    #[test]
    fn requeued_tags_are_skipped_but_not_acked() {
        let mut state = state_with(&[(1, false), (2, true), (3, false)]);
        assert!(state.take_flushable().is_some(), "tag 2 is acked");
        assert_eq!(state.next_tag, 4);
        assert_eq!(state.unsent, 0);

        let mut only_requeued = state_with(&[(1, false)]);
        assert!(only_requeued.take_flushable().is_none(), "nothing to ack");
        assert_eq!(only_requeued.next_tag, 2);
    }
}
