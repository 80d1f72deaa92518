//! The command line.

use clap::{Args, Parser, Subcommand};

/// A value on the command line (or in a file it names) that the CLI itself refuses: exit
/// code 4, as for the server's INVALID_ARGUMENT, so a script tells its own mistake from a
/// failure.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

impl Usage {
    /// `err` (a parse of an argument that failed) as the CLI's refusal.
    pub fn of(err: anyhow::Error) -> anyhow::Error {
        anyhow::Error::new(Usage(format!("{err:#}")))
    }
}

/// Refuses a command line: `return Err(usage!("--flag: …"))`.
macro_rules! usage {
    ($($arg:tt)*) => {
        anyhow::Error::new($crate::args::Usage(format!($($arg)*)))
    };
}
pub(crate) use usage;

#[derive(Parser)]
#[command(name = "salesplanctl", version, about = "Sales plans from a terminal")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct Global {
    /// Bearer token (see `salesplanctl token`).
    #[arg(long, env = "SALESPLAN_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    #[arg(
        long,
        env = "SALESPLAN_DEAL_SERVICE_URL",
        default_value = "http://127.0.0.1:50053",
        global = true
    )]
    pub deal_service: String,
    #[arg(
        long,
        env = "SALESPLAN_INTAKE_URL",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub intake: String,
    #[arg(
        long,
        env = "SALESPLAN_REPORTING_URL",
        default_value = "http://127.0.0.1:50054",
        global = true
    )]
    pub reporting: String,
    #[arg(
        long,
        env = "SALESPLAN_DISTRIBUTOR_URL",
        default_value = "http://127.0.0.1:50052",
        global = true
    )]
    pub distributor: String,
    /// Machine-readable output.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum Command {
    /// Mint a development token (HS256 with SALESPLAN_JWT_HS256_SECRET or the dev secret).
    Token {
        #[arg(long)]
        account: String,
        #[arg(long)]
        user: String,
        /// deals:edit_all, deals:bulk_edit, plans:admin, intake:write, deals:read,
        /// reports:read, contacts:erase; platform:operate for operators (repeatable).
        #[arg(long = "perm")]
        perms: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    #[command(subcommand)]
    Plans(Plans),
    #[command(subcommand)]
    Deals(Deals),
    #[command(subcommand)]
    Intake(Intake),
    #[command(subcommand)]
    Reports(Reports),
    /// Events deal-service parked because the broker refused them.
    #[command(subcommand)]
    Outbox(Outbox),
    /// A person's data in the account (docs/privacy.md).
    #[command(subcommand)]
    Contacts(Contacts),
    /// Managers' availability: working hours, days off, pause.
    #[command(subcommand)]
    Managers(Managers),
}

#[derive(Subcommand)]
pub enum Managers {
    /// A manager's availability, and whether automatic distribution may pick them now.
    Show { manager: String },
    /// The managers whose availability was set.
    List,
    /// Replace a manager's schedule (plans:admin). Without --hours the manager works
    /// around the clock (days off aside).
    Schedule {
        manager: String,
        /// An IANA time zone.
        #[arg(long, default_value = "UTC")]
        tz: String,
        /// `DAYS=HH:MM-HH:MM[,HH:MM-HH:MM…]`, DAYS as `mon`, `mon-fri` or `sat,sun`; 24:00
        /// ends a day (repeatable).
        #[arg(long = "hours")]
        hours: Vec<String>,
        /// Days off: `2026-12-24` or `2026-12-24..2026-12-26` (repeatable).
        #[arg(long = "off")]
        off: Vec<String>,
    },
    /// No new leads until resumed (the manager themself, or plans:admin).
    Pause { manager: String },
    /// Take leads again.
    Resume { manager: String },
}

#[derive(Subcommand)]
pub enum Contacts {
    /// Erase a person: every deal of theirs in the account loses its contact and title
    /// (contacts:erase). Any of the identifiers matches; prints the receipt.
    Erase(Person),
    /// Everything the account holds about a person (deals:read): each deal with its
    /// contact and history, as one JSON document.
    Export(Person),
}

/// Who: any of the identifiers matches.
#[derive(Args)]
pub struct Person {
    #[arg(long, default_value = "")]
    pub external_id: String,
    #[arg(long, default_value = "")]
    pub email: String,
    #[arg(long, default_value = "")]
    pub phone: String,
}

/// A plan to create.
#[derive(clap::Args)]
pub struct NewPlan {
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub label: String,
    /// Average deal amount in minor units.
    #[arg(long, default_value_t = 0)]
    pub amount: i64,
    #[arg(long, default_value = "USD")]
    pub currency: String,
    #[command(flatten)]
    pub distribution: DistributionArgs,
    /// A manager: `id`, `id:weight` (1 to 100, 0 the default 1; round robin shares leads by weight) or
    /// `id:weight:limit` (the most open deals automatic distribution gives it; 0: no limit);
    /// an id that ends in a colon and a number needs all three.
    #[arg(long = "manager")]
    pub managers: Vec<String>,
}

/// How a plan distributes its leads.
#[derive(Args, Clone)]
pub struct DistributionArgs {
    /// manual, random, round-robin or least-open.
    #[arg(long, default_value = "round-robin")]
    pub distribution: String,
    #[arg(long)]
    pub prefer_related: bool,
    /// With --prefer-related: the related manager gets the lead even while unavailable.
    #[arg(long)]
    pub keep_related: bool,
    /// A response deadline: seconds of the manager's working time to accept a deal the
    /// distributor assigned (`salesplanctl deals accept`); then it goes to the next manager.
    #[arg(long, default_value_t = 0)]
    pub response_deadline: u32,
    /// With --response-deadline: reassignments before the deal waits for a person.
    #[arg(long, default_value_t = 0)]
    pub max_reassignments: u32,
}

#[derive(Subcommand)]
pub enum Plans {
    Create(NewPlan),
    /// Set how the plan distributes leads: every setting (those not given take their
    /// defaults), in force for every lead accepted after the answer.
    Distribution {
        plan: String,
        #[command(flatten)]
        distribution: DistributionArgs,
    },
    List {
        #[arg(long)]
        archived: bool,
    },
    Show {
        plan: String,
    },
    /// Replace the plan's managers.
    Managers {
        plan: String,
        /// A manager: `id`, `id:weight` (1 to 100, 0 the default 1; round robin shares leads by weight) or
        /// `id:weight:limit` (the most open deals automatic distribution gives it; 0: no limit);
        /// an id that ends in a colon and a number needs all three.
        #[arg(long = "manager")]
        managers: Vec<String>,
    },
    /// Add an OPEN stage.
    AddStage {
        plan: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        color: String,
        #[arg(long)]
        position: Option<i32>,
    },
    /// Set the reasons for refusal of the LOST stage.
    Reasons {
        plan: String,
        #[arg(long)]
        require: bool,
        /// Reason names, in order (existing ones keep their id when named the same).
        #[arg(long = "reason")]
        reasons: Vec<String>,
    },
    /// Takes no new leads from now on; leads accepted before still become deals.
    Archive {
        plan: String,
    },
    /// Takes leads again.
    Unarchive {
        plan: String,
    },
}

#[derive(Args, Clone, Default)]
pub struct Filter {
    #[arg(long)]
    pub plan: Option<String>,
    #[arg(long = "stage")]
    pub stages: Vec<String>,
    #[arg(long = "manager")]
    pub managers: Vec<String>,
    #[arg(long)]
    pub unassigned: bool,
    /// Only deals waiting in their plan's queue for a manager.
    #[arg(long)]
    pub waiting: bool,
    /// open, won or lost (repeatable).
    #[arg(long = "status")]
    pub statuses: Vec<String>,
    /// Title, contact name, e-mail or phone.
    #[arg(long)]
    pub search: Option<String>,
}

/// A deal to create by hand.
#[derive(clap::Args)]
pub struct NewDeal {
    #[arg(long)]
    pub plan: String,
    #[arg(long)]
    pub title: Option<String>,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub email: Option<String>,
    #[arg(long)]
    pub phone: Option<String>,
    #[arg(long)]
    pub external_id: Option<String>,
    #[arg(long)]
    pub manager: Option<String>,
    /// Default: a new random key.
    #[arg(long)]
    pub key: Option<String>,
}

#[derive(Subcommand)]
pub enum Deals {
    Create(NewDeal),
    List {
        #[command(flatten)]
        filter: Filter,
        #[arg(long, default_value_t = 50)]
        limit: i32,
        /// Answer only once what this consistency token stands for is included: a write
        /// (its `salesplan-consistency-token`) or the deals of accepted leads (the token
        /// `intake add` prints).
        #[arg(long = "fresh-as", value_name = "TOKEN", default_value = "")]
        fresh_as: String,
    },
    Board {
        #[arg(value_name = "PLAN")]
        board_plan: String,
        #[command(flatten)]
        filter: Filter,
        #[arg(long, default_value_t = 5)]
        cards: i32,
        /// Answer only once what this consistency token stands for is included: a write
        /// (its `salesplan-consistency-token`) or the deals of accepted leads (the token
        /// `intake add` prints).
        #[arg(long = "fresh-as", value_name = "TOKEN", default_value = "")]
        fresh_as: String,
    },
    Show {
        deal: String,
    },
    Move {
        deal: String,
        #[arg(long)]
        stage: String,
        #[arg(long)]
        reason: Option<String>,
    },
    Assign {
        deal: String,
        /// Omit to unassign.
        #[arg(long)]
        manager: Option<String>,
    },
    Transfer {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        plan: Option<String>,
    },
    Reopen {
        deal: String,
    },
    /// Take on a deal assigned to you: stops its plan's response deadline.
    Accept {
        deal: String,
    },
    History {
        deal: String,
    },
    /// Why the deal has its manager (or none): the distributor's decision, every candidate
    /// and why it was taken or passed over, and the response deadlines the deal missed.
    Explain {
        deal: String,
    },
    /// Prints the plan's deal changes as they happen (WatchDeals), a line each (JSON
    /// lines with --json), until interrupted; with `--snapshot` the board first.
    Watch {
        /// The plan whose deals to watch (one not of your account is NOT_FOUND).
        #[arg(long)]
        plan: String,
        /// Only deals in these stages (before or after the change).
        #[arg(long = "stage")]
        stages: Vec<String>,
        /// Only deals of this manager (before or after the change).
        #[arg(long)]
        manager: Option<String>,
        /// The board first (as `deals board`), then the changes after it.
        #[arg(long)]
        snapshot: bool,
        /// Resume after this token (printed with every change, and first of all).
        #[arg(long = "resume", value_name = "TOKEN")]
        resume: Option<String>,
        /// Stop after this many changes, 1 or more (default: until interrupted).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
    },
}

#[derive(Subcommand)]
pub enum Intake {
    /// Add one contact to a plan.
    Add {
        #[arg(long)]
        plan: String,
        #[arg(long)]
        run: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        phone: Option<String>,
        #[arg(long)]
        external_id: Option<String>,
    },
    /// Bulk add from a CSV file with a header: external_id,name,email,phone (any subset).
    Bulk {
        #[arg(long)]
        plan: String,
        #[arg(long)]
        file: std::path::PathBuf,
        /// Default: the file name (a retry of the same file adds nobody twice).
        #[arg(long)]
        job: Option<String>,
        #[arg(long)]
        manager: Option<String>,
    },
    /// Accepted leads that were refused on their own when their deal was created.
    Rejections {
        #[arg(long)]
        plan: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i32,
    },
}

#[derive(Subcommand)]
pub enum Reports {
    /// "By reasons for refusal".
    LossReasons {
        /// plan or manager.
        #[arg(long, default_value = "plan")]
        by: String,
        #[arg(long)]
        details: bool,
        #[arg(long = "plan")]
        plans: Vec<String>,
        #[command(flatten)]
        period: PeriodArgs,
        /// Answer only once what this consistency token stands for is included: a write
        /// (its `salesplan-consistency-token`) or the deals of accepted leads (the token
        /// `intake add` prints).
        #[arg(long = "fresh-as", value_name = "TOKEN", default_value = "")]
        fresh_as: String,
    },
    /// How many deals are with which manager and in which stage: per plan and manager
    /// open, won, lost and those waiting in the queue for a manager; per stage the deals
    /// and their sums.
    Pipeline {
        /// One plan (default: every plan of the account).
        #[arg(long)]
        plan: Option<String>,
        #[arg(long = "fresh-as", value_name = "TOKEN", default_value = "")]
        fresh_as: String,
    },
    /// How fast managers accept their deals: per manager and plan, assigned, accepted,
    /// median and 90th percentile working time to accept, deadlines missed.
    ResponseTimes {
        #[arg(long = "plan")]
        plans: Vec<String>,
        #[arg(long = "manager")]
        managers: Vec<String>,
        #[command(flatten)]
        period: PeriodArgs,
        #[arg(long = "fresh-as", value_name = "TOKEN", default_value = "")]
        fresh_as: String,
    },
}

/// A report's period, `[from, to)`, each an RFC 3339 time (`2026-12-01T00:00:00Z`);
/// either may be left open.
#[derive(clap::Args)]
pub struct PeriodArgs {
    #[arg(long, value_name = "RFC3339")]
    pub from: Option<String>,
    #[arg(long, value_name = "RFC3339")]
    pub to: Option<String>,
}

impl PeriodArgs {
    /// The period as the API takes it; none when both ends are open.
    pub fn range(&self) -> anyhow::Result<Option<salesplan_proto::v1::TimeRange>> {
        let at = |flag: &str, value: &Option<String>| -> anyhow::Result<_> {
            value
                .as_deref()
                .map(|v| {
                    time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
                        .map(salesplan_proto::time::timestamp)
                        .map_err(|err| usage!("--{flag}: {v:?} is not an RFC 3339 time: {err}"))
                })
                .transpose()
        };
        let (from, to) = (at("from", &self.from)?, at("to", &self.to)?);
        Ok((from.is_some() || to.is_some()).then_some(salesplan_proto::v1::TimeRange { from, to }))
    }
}

#[derive(Subcommand)]
pub enum Outbox {
    /// Parked events, oldest first (the account's own; every account's with a
    /// platform:operate token).
    Parked {
        /// platform:operate only: one account.
        #[arg(long, default_value = "")]
        account: String,
        #[arg(long, default_value_t = 100)]
        limit: i32,
        /// Continue after this id.
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
    /// Put parked events back in the outbox, to be published again.
    Replay {
        #[arg(required = true)]
        ids: Vec<i64>,
    },
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
