"""Tables (SQLAlchemy Core). Change them only together with a migration in migrations/versions."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

region = sa.Table(
    "region",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
)

checkpoint = sa.Table(
    "checkpoint",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    sa.Column("code", sa.String(100), nullable=False),
    sa.Column("region_id", sa.Integer, sa.ForeignKey("region.id"), nullable=False),
    sa.Column("is_primary", sa.Boolean, nullable=False, server_default=sa.true()),  # 0005
)

server = sa.Table(
    "server",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("agent_id", sa.String(64), nullable=False, unique=True),
    sa.Column("checkpoint_id", sa.Integer, sa.ForeignKey("checkpoint.id"), nullable=False),
    sa.Column("ipv4", sa.Text, nullable=False, server_default="[]"),  # JSON list
    sa.Column("ipv6", sa.Text, nullable=False, server_default="[]"),
    sa.Column("version", sa.String(50), nullable=False, server_default=""),
    sa.Column("probe_types", sa.Text, nullable=False, server_default="[]"),
    sa.Column("capacity", sa.Integer, nullable=False, server_default="1000"),
    sa.Column("online", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("first_seen_us", sa.BigInteger, nullable=False),
    sa.Column("last_seen_us", sa.BigInteger, nullable=False),
    # 0005: pending, upcoming, active or retired (offline is `online` false); an upcoming
    # server takes checks from activate_after_us on (NULL: only when approved)
    sa.Column("state", sa.String(16), nullable=False, server_default="active"),
    sa.Column("activate_after_us", sa.BigInteger, nullable=True),
)

operator = sa.Table(
    "operator",
    metadata,
    sa.Column("guid", sa.String(36), primary_key=True),
    sa.Column("username", sa.String(200), nullable=False, unique=True),
    sa.Column("full_name", sa.String(200), nullable=False),
    sa.Column("password_hash", sa.String(300), nullable=False),
    # unused since 0007: membership of the Administrators group says who is one (dropping
    # the column would make SQLite copy the table, and cascade-delete the API accounts)
    sa.Column("is_admin", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_us", sa.BigInteger, nullable=False),
    # 0007: Uptrends' operator fields. `username` is the login: "admin" for the built-in
    # operator, the lower-case Email for the others; email_key is the lower-case Email
    sa.Column("email", sa.String(254), nullable=True),
    sa.Column("email_key", sa.String(254), nullable=True),
    sa.Column("backup_email", sa.String(254), nullable=True),
    sa.Column("mobile_phone", sa.String(50), nullable=True),
    sa.Column("is_on_duty", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("time_zone_id", sa.Integer, nullable=True),
    sa.Column("allow_native_login", sa.Boolean, nullable=True),
    # JSON: the fields Picket keeps but does not act on (CultureName, SmsProvider, ...)
    sa.Column("settings", sa.Text, nullable=False, server_default="{}"),
    sa.Column("modified_us", sa.BigInteger, nullable=True),
    sa.Index("ux_operator_email_key", "email_key", unique=True),
)

# operator groups (0007); the built-in Everyone (every operator, implicitly) and Administrators
operator_group = sa.Table(
    "operator_group",
    metadata,
    sa.Column("guid", sa.String(36), primary_key=True),
    sa.Column("description", sa.String(200), nullable=False),
    sa.Column("is_everyone", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("is_administrators", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_us", sa.BigInteger, nullable=False),
)

# members of groups other than Everyone (0007)
operator_group_member = sa.Table(
    "operator_group_member",
    metadata,
    sa.Column(
        "group_guid",
        sa.String(36),
        sa.ForeignKey("operator_group.guid", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column(
        "operator_guid",
        sa.String(36),
        sa.ForeignKey("operator.guid", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Index("ix_operator_group_member_operator", "operator_guid"),
)

# off-duty schedules (0007): wall-clock times, read in the operator's time zone
duty_schedule = sa.Table(
    "duty_schedule",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "operator_guid",
        sa.String(36),
        sa.ForeignKey("operator.guid", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("mode", sa.String(16), nullable=False),  # OneTime, Daily, Weekly, Monthly
    sa.Column("start_local", sa.String(19), nullable=True),  # OneTime: YYYY-MM-DDTHH:MM:SS
    sa.Column("end_local", sa.String(19), nullable=True),
    sa.Column("week_day", sa.SmallInteger, nullable=True),  # Weekly: 0 Sunday ... 6 Saturday
    sa.Column("month_day", sa.SmallInteger, nullable=True),  # Monthly: 1 ... 31
    sa.Column("start_time", sa.String(5), nullable=True),  # HH:MM
    sa.Column("end_time", sa.String(5), nullable=True),
    sa.Column("created_us", sa.BigInteger, nullable=False),
    sa.Index("ix_duty_schedule_operator", "operator_guid"),
)

api_account = sa.Table(
    "api_account",
    metadata,
    sa.Column("username", sa.String(64), primary_key=True),
    sa.Column("password_hash", sa.String(300), nullable=False),
    sa.Column(
        "operator_guid",
        sa.String(36),
        sa.ForeignKey("operator.guid", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("description", sa.String(200), nullable=False, server_default="API"),
    sa.Column("created_us", sa.BigInteger, nullable=False),
)

monitor = sa.Table(
    "monitor",
    metadata,
    sa.Column("guid", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("monitor_type", sa.String(40), nullable=False),
    sa.Column("is_active", sa.Boolean, nullable=False),
    sa.Column("definition", sa.Text, nullable=False),  # JSON, Uptrends field names
    sa.Column("revision", sa.String(32), nullable=False),
    sa.Column("created_us", sa.BigInteger, nullable=False),
    sa.Column("modified_us", sa.BigInteger, nullable=False),
)

assignment = sa.Table(
    "assignment",
    metadata,
    sa.Column("monitor_guid", sa.String(36), primary_key=True),
    sa.Column("agent_id", sa.String(64), primary_key=True),
    sa.Column("revision", sa.String(32), nullable=False),
    # the turn published with it (0007); NULL: not known, published again after a restart
    sa.Column("rotation_position", sa.Integer, nullable=True),
    sa.Column("rotation_count", sa.Integer, nullable=True),
)

monitor_check = sa.Table(
    "monitor_check",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("uid", sa.String(32), nullable=False, unique=True),  # the agent's result id
    sa.Column("monitor_guid", sa.String(36), nullable=False),
    sa.Column("server_id", sa.Integer, nullable=True),
    sa.Column("ts_us", sa.BigInteger, nullable=False),  # when the check started
    sa.Column("scheduled_us", sa.BigInteger, nullable=False),
    sa.Column(
        "error_level", sa.SmallInteger, nullable=False
    ),  # 0 NoError, 1 Unconfirmed, 2 Confirmed
    sa.Column("error_code", sa.Integer, nullable=False),
    sa.Column("attributes", sa.Text, nullable=False),  # JSON: timings and the rest
    sa.Column("response_body", sa.Text, nullable=True),  # failed checks only, truncated
    sa.Column("details", sa.Text, nullable=True),  # JSON per type: headers, waterfall (0002)
    # 0 a check, 1 a partial check of a concurrent slot, 2 the slot's concurrent check (0006)
    sa.Column("check_kind", sa.SmallInteger, nullable=False, server_default="0"),
    sa.Index("ix_monitor_check_monitor_ts", "monitor_guid", "ts_us", "id"),
)

# when each monitor was placed on each agent (0003): results are accepted by this history
assignment_history = sa.Table(
    "assignment_history",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("monitor_guid", sa.String(36), nullable=False),
    sa.Column("agent_id", sa.String(64), nullable=False),
    sa.Column("start_us", sa.BigInteger, nullable=False),
    sa.Column("end_us", sa.BigInteger, nullable=True),  # NULL: assigned now
    sa.Index("ix_assignment_history_monitor_agent", "monitor_guid", "agent_id"),
)

# results the database refused (a NUL in text on PostgreSQL, an integer out of range, ...):
# kept with the reason instead of blocking the agent that sent them (0004). Values
# are stored as escaped JSON text, so the row itself cannot be refused for the same reason.
dead_letter = sa.Table(
    "dead_letter",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("received_us", sa.BigInteger, nullable=False),
    sa.Column("agent_id", sa.Text, nullable=False),
    sa.Column("batch_id", sa.Text, nullable=False),
    sa.Column("result_uid", sa.Text, nullable=True),
    sa.Column("monitor_guid", sa.Text, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),  # the result as received (JSON, ASCII)
    sa.Index("ix_dead_letter_received", "received_us"),
)

# one-time enrolment tokens (0005): only a hash of the token is kept; once used, the agent it
# enrolled, whose checkpoint it fixes, and the agent's public key
enrolment = sa.Table(
    "enrolment",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("checkpoint_name", sa.String(100), nullable=False),
    sa.Column("region_name", sa.String(100), nullable=False),
    sa.Column("created_us", sa.BigInteger, nullable=False),
    sa.Column("expires_us", sa.BigInteger, nullable=False),
    sa.Column("used_us", sa.BigInteger, nullable=True),
    sa.Column("agent_id", sa.String(64), nullable=True, unique=True),
    sa.Column("public_key", sa.Text, nullable=True),
)

# integrations (0009): where notifications go; `config` is the kind's configuration as JSON,
# secrets included (the API shows them masked)
integration = sa.Table(
    "integration",
    metadata,
    sa.Column("guid", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("type", sa.String(40), nullable=False),  # Uptrends' Type
    sa.Column("kind", sa.String(40), nullable=True),  # Picket's Kind of a GenericWebhook
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("revision", sa.String(32), nullable=False),
    sa.Column("created_us", sa.BigInteger, nullable=False),
    sa.Column("modified_us", sa.BigInteger, nullable=False),
)

# monitor groups (0008): the built-in All Monitors group (is_all) has every monitor without
# member rows; the others list theirs, removed with the monitor or the group
monitor_group = sa.Table(
    "monitor_group",
    metadata,
    sa.Column("guid", sa.String(36), primary_key=True),
    sa.Column("description", sa.String(200), nullable=False, unique=True),
    sa.Column("is_all", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_us", sa.BigInteger, nullable=False),
)

monitor_group_member = sa.Table(
    "monitor_group_member",
    metadata,
    sa.Column(
        "group_guid",
        sa.String(36),
        sa.ForeignKey("monitor_group.guid", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column(
        "monitor_guid",
        sa.String(36),
        sa.ForeignKey("monitor.guid", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Index("ix_monitor_group_member_monitor", "monitor_guid"),
)

# the ids handed out to maintenance periods (0008), so that none is given twice; the periods
# themselves live in their monitor's definition (the agents get them with it)
maintenance_period_id = sa.Table(
    "maintenance_period_id",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("monitor_guid", sa.String(36), nullable=False),
    sa.Column("created_us", sa.BigInteger, nullable=False),
)

# alert definitions (0011): to whom and how alerts of their member monitors go. Each has the
# four escalation levels 1-4 from its creation; members, level members and level integrations
# are removed with what they name (a monitor, group, operator, operator group, integration)
alert_definition = sa.Table(
    "alert_definition",
    metadata,
    sa.Column("guid", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("is_active", sa.Boolean, nullable=False),
    sa.Column("created_us", sa.BigInteger, nullable=False),
    sa.Column("modified_us", sa.BigInteger, nullable=False),
)


def _definition_fk() -> sa.Column[str]:
    return sa.Column(
        "definition_guid",
        sa.String(36),
        sa.ForeignKey("alert_definition.guid", ondelete="CASCADE"),
        primary_key=True,
    )


escalation_level = sa.Table(
    "escalation_level",
    metadata,
    _definition_fk(),
    sa.Column("level", sa.SmallInteger, primary_key=True),  # 1 ... 4
    sa.Column("is_active", sa.Boolean, nullable=False),
    sa.Column("mode", sa.String(24), nullable=False),  # AlertOnErrorCount, AlertOnErrorDuration
    sa.Column("threshold_error_count", sa.Integer, nullable=False),
    sa.Column("threshold_minutes", sa.Integer, nullable=False),
    sa.Column("number_of_reminders", sa.Integer, nullable=False),
    sa.Column("reminder_delay", sa.Integer, nullable=False),  # minutes
    sa.Column("message", sa.Text, nullable=False),
)

alert_definition_monitor = sa.Table(
    "alert_definition_monitor",
    metadata,
    _definition_fk(),
    sa.Column(
        "monitor_guid",
        sa.String(36),
        sa.ForeignKey("monitor.guid", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("created_us", sa.BigInteger, nullable=False),
    sa.Index("ix_alert_definition_monitor_monitor", "monitor_guid"),
)

alert_definition_monitor_group = sa.Table(
    "alert_definition_monitor_group",
    metadata,
    _definition_fk(),
    sa.Column(
        "group_guid",
        sa.String(36),
        sa.ForeignKey("monitor_group.guid", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("created_us", sa.BigInteger, nullable=False),
    sa.Index("ix_alert_definition_monitor_group_group", "group_guid"),
)

escalation_level_operator = sa.Table(
    "escalation_level_operator",
    metadata,
    _definition_fk(),
    sa.Column("level", sa.SmallInteger, primary_key=True),
    sa.Column(
        "operator_guid",
        sa.String(36),
        sa.ForeignKey("operator.guid", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("created_us", sa.BigInteger, nullable=False),
    sa.Index("ix_escalation_level_operator_operator", "operator_guid"),
)

escalation_level_operator_group = sa.Table(
    "escalation_level_operator_group",
    metadata,
    _definition_fk(),
    sa.Column("level", sa.SmallInteger, primary_key=True),
    sa.Column(
        "group_guid",
        sa.String(36),
        sa.ForeignKey("operator_group.guid", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("created_us", sa.BigInteger, nullable=False),
    sa.Index("ix_escalation_level_operator_group_group", "group_guid"),
)

escalation_level_integration = sa.Table(
    "escalation_level_integration",
    metadata,
    _definition_fk(),
    sa.Column("level", sa.SmallInteger, primary_key=True),
    sa.Column(
        "integration_guid",
        sa.String(36),
        sa.ForeignKey("integration.guid", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("is_active", sa.Boolean, nullable=False),
    sa.Column("send_ok_alerts", sa.Boolean, nullable=False),
    sa.Column("send_reminder_alerts", sa.Boolean, nullable=False),
    sa.Column("variable_values", sa.Text, nullable=False),  # JSON {name: value}
    sa.Column("extra_email_addresses", sa.Text, nullable=False),  # JSON [address]
    sa.Column("created_us", sa.BigInteger, nullable=False),
    sa.Index("ix_escalation_level_integration_integration", "integration_guid"),
)

# one row (id 1): raised in the transaction of every change to what alerting reads (the
# tables above, monitor group members, deletions that cascade into them), so that every
# controller's cache of alert definitions sees a change made by another (controller/alerting)
alerting_revision = sa.Table(
    "alerting_revision",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("revision", sa.BigInteger, nullable=False),
)
