//! One module per subcommand.

pub mod cancel;
pub mod decide;
pub mod describe;
pub mod get;
pub mod logs;
pub mod rerun;
pub mod run;
pub mod ui;
