//! Reloads, the decisions: when the config is read, and who shares which reading of it.
//!
//! Reading and checking a config is done off the event loop (runtime.rs), and takes time: most
//! of a second for a 1 MiB file in a debug build, and as long as it likes on a file system that
//! hangs. One reading is under way at a time. Whoever asks for a reload meanwhile shares the
//! next reading, which begins once the one under way has ended: it may have read the file
//! before their edit, so they must not share its outcome. However many ask meanwhile, that is
//! one more reading, and its outcome goes to each of them: the refusal, or the roll to the new
//! config (itself shared with the requests a roll under way already has, see `roll_for`).
//! So N reloads asked at once cost two readings and two rolls, not N of each. A stop answers
//! every one of them at once.

use super::{Action, Level, Params, Phase, RequestId, Scope, Supervisor};

/// The readings of the config that reloads asked for.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct Loads {
    /// A reading is under way, with the requests waiting for its outcome (and whether
    /// systemd's `ExecReload=` is one of them).
    pub(super) current: Option<(Vec<RequestId>, bool)>,
    /// Reloads asked for while it was: the requests that share the next reading.
    pub(super) next: Option<(Vec<RequestId>, bool)>,
}

impl Supervisor {
    /// A reload was asked for (`request` is who to answer; none for SIGHUP).
    pub(super) fn on_reload(&mut self, request: Option<RequestId>, systemd_waits: bool) {
        if self.phase != Phase::Running {
            if let Some(r) = request {
                self.reply(r, Err("corral is stopping".into()));
            }
            return;
        }
        if self.loads.current.is_none() {
            self.loads.current = Some((request.into_iter().collect(), systemd_waits));
            self.out.push(Action::Load);
            return;
        }
        if self.loads.next.is_none() {
            self.log(
                Level::Info,
                None,
                None,
                None,
                "the config is being read: this reload reads it again after that, with every \
                 reload asked for meanwhile"
                    .into(),
            );
        }
        let next = self.loads.next.get_or_insert_with(|| (Vec::new(), false));
        next.0.extend(request);
        next.1 |= systemd_waits;
    }

    /// The reading a `Load` asked for ended: the new generation, registered with its
    /// parameters, or why the config was refused (said to everyone who waited for it).
    pub(super) fn on_loaded(&mut self, outcome: Result<(u32, Params), String>) {
        let (requests, systemd_waits) = self.loads.current.take().unwrap_or_default();
        if self.phase != Phase::Running {
            // Its requests were answered when the stop began.
            if let Ok((generation, _)) = outcome {
                self.out.push(Action::Forget { generation });
            }
            return;
        }
        match outcome {
            Ok((generation, params)) => {
                self.roll_for(generation, params, Scope::All, requests, systemd_waits)
            }
            Err(why) => {
                for r in requests {
                    self.reply(r, Err(why.clone()));
                }
            }
        }
        if let Some(next) = self.loads.next.take() {
            self.loads.current = Some(next);
            self.out.push(Action::Load);
        }
    }

    /// At the stop: the requests waiting for a reading, under way or next, for the stop to
    /// answer. No reading follows; the one under way, if any, is still awaited (its
    /// generation is forgotten when it comes).
    pub(super) fn waiting_for_loads(&mut self) -> Vec<RequestId> {
        let mut waiting = Vec::new();
        if let Some((current, _)) = &mut self.loads.current {
            waiting.append(current);
        }
        waiting.extend(self.loads.next.take().into_iter().flat_map(|(r, _)| r));
        waiting
    }
}
