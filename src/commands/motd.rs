//! `motd`: prints the login banner ([`crate::motd`]) that the package's update-motd.d fragment
//! shows at every login. Nothing at all while the switch is off; it must stay instant, so it
//! reads the configuration, the state file and the hold spool only, and never fails loudly (a
//! broken state file gives a banner without the image, not an error at login).

use crate::config::Config;
use crate::exit_codes::ExitCode;
use crate::state::State;
use anyhow::Result;

pub fn motd(cfg: &Config) -> Result<ExitCode> {
    if !cfg.enabled {
        return Ok(ExitCode::Ok);
    }
    let state = State::read(&cfg.state_file()).unwrap_or_else(|e| {
        log::warn!("{e:#}");
        None
    });
    let spool = crate::hold::read(&cfg.state_dir);
    // The engineer who logs in, greeted with their own edits and holds; none for root itself
    // (pam_motd runs the fragment as root, with a cleared environment).
    let caller = crate::accounts::caller().map(|uid| {
        let name = crate::accounts::user_name(uid).unwrap_or_else(|| format!("uid {uid}"));
        (uid, name)
    });
    print!(
        "{}",
        crate::motd::render(
            cfg,
            state.as_ref(),
            &spool,
            std::time::SystemTime::now(),
            caller.as_ref()
        )
    );
    Ok(ExitCode::Ok)
}
