//! Control requests (`ctl`): what each does to the supervisor. The
//! connections themselves are [`crate::control::server`]'s.

use super::{ShutdownKind, Supervisor};
use crate::control::status::{self, Overview};
use crate::control::Request;
use crate::service::AfterStop;

impl Supervisor {
    pub(super) fn handle_requests(&mut self, now: u64) {
        for (id, req, peer) in self.control.take_requests() {
            let result = req.and_then(|r| {
                if let Err(why) = self.access.check(&r, peer.as_ref()) {
                    let (uid, pid) = peer
                        .as_ref()
                        .map_or((-1, -1), |p| (p.uid as i64, p.pid as i64));
                    tracing::warn!(
                        "control: refused {:?} from uid {uid}, pid {pid}",
                        r.to_line()
                    );
                    return Err(why);
                }
                self.handle_request(r)
            });
            self.control.answer(id, result, now);
        }
    }

    pub(super) fn handle_request(&mut self, req: Request) -> Result<String, String> {
        let restart = matches!(req, Request::Restart(_));
        let find = |this: &Self, name: &str| {
            this.index
                .get(name)
                .copied()
                .ok_or_else(|| format!("no service named {name:?}"))
        };
        match req {
            Request::Status => Ok(status::text(&self.services)),
            Request::StatusJson => Ok(status::json(
                &self.services,
                Overview {
                    boot_complete: self.boot.is_complete(),
                    shutting_down: self.shutdown.is_some(),
                },
            )),
            Request::Logs(n) => {
                let i = find(self, &n)?;
                Ok(self.services[i].log.text())
            }
            Request::Stop(n) => {
                let i = find(self, &n)?;
                self.stop(i, AfterStop::Stay);
                Ok(format!("stopping {n}\n"))
            }
            Request::Restart(n) | Request::Start(n) => {
                let i = find(self, &n)?;
                if self.shutdown.is_some() {
                    return Err("shutting down".into());
                }
                if self.services[i].pid().is_some() {
                    if restart {
                        self.stop(i, AfterStop::Restart);
                    }
                } else {
                    self.services[i].operator_start();
                }
                Ok(format!(
                    "{} {n}\n",
                    if restart { "restarting" } else { "starting" }
                ))
            }
            Request::Reboot => {
                self.request_shutdown(ShutdownKind::Reboot, "ctl reboot");
                Ok("rebooting\n".into())
            }
            Request::Poweroff => {
                self.request_shutdown(ShutdownKind::Poweroff, "ctl poweroff");
                Ok("powering off\n".into())
            }
            #[cfg(debug_assertions)]
            Request::InjectLostExit(n) => {
                let i = find(self, &n)?;
                let pid = self.services[i].pid().ok_or("not running")?;
                let mut status = 0;
                // SAFETY: plain integers, and a status to write into.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                // A debug-only test seam: leave the turn as a bug would.
                #[allow(clippy::panic)]
                {
                    panic!("injected: the exit of {pid} was reaped and not routed")
                }
            }
        }
    }
}
