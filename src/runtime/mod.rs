//! What every task on a worker's monoio runtime leans on, below tunnels and workers alike:
//! spawning so that a panic ends only its own task, the relay budget and yield pump that
//! keep one busy tunnel from stalling its worker, and the doorbell that lets another
//! thread wake a worker's task.
//!
//! - [`task`]: contained spawning, [`task::Budget`], the yield pump and yield hook.
//! - [`doorbell`]: waking a monoio task from another thread, without polling.
//! - [`trim`]: giving the memory freed after a peak back to the kernel (`malloc_trim`).

pub(crate) mod doorbell;
pub(crate) mod task;
pub(crate) mod trim;
