//! Child processes that cannot outlive the test: [`Proc`] is killed on drop, [`Group`] is killed
//! with its whole process group (for commands that fork, as `runuser` does).

use std::process::Child;

/// A child process killed on drop.
#[derive(Debug)]
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub fn running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

/// A process group killed whole on drop; spawn its leader with `process_group(0)`.
#[derive(Debug)]
pub struct Group(pub Child);

impl Drop for Group {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.0.wait();
    }
}

impl Group {
    pub fn running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}
