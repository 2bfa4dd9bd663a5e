//! Who may read and change which records: the rules the server enforces on
//! every document and field, kept here (pure, no I/O) so the tablet can
//! show the same answers before it syncs.
//!
//! Reading goes by role, area and kind; everyone reads what they created.
//! Writing needs the record's area among the user's, the right to read it,
//! changes attributed to the user, and for review decisions the
//! supervisor's role. The review block is judged on what each change does
//! to it (see [`crate::inspect::review_edits`]): comments are append-only
//! and carry their real author, and only a supervisor of the area moves a
//! record's state, except a creator submitting their draft or returned
//! record. A refused write names its rule, so the tablet can show *why* a
//! change was not accepted.

use automerge::Change;
use serde::{Deserialize, Serialize};

use crate::header::Header;
use crate::inspect::{conflicts, user_of, CommentFieldEdit, ReviewBlock, ReviewEdit};
use crate::read::Reader;
use crate::schema::{Kind, ReviewState};

/// What a user does, which decides what they may read and change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A field officer: patrol notes and meetings of their areas.
    Officer,
    /// A community liaison: meetings and feedback of their areas.
    Liaison,
    /// Reviews and decides on everything in their areas.
    Supervisor,
    /// Manages users and devices; reads no records.
    Admin,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Officer, Role::Liaison, Role::Supervisor, Role::Admin];

    /// Parses a role name.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The role's name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Officer => "officer",
            Role::Liaison => "liaison",
            Role::Supervisor => "supervisor",
            Role::Admin => "admin",
        }
    }

    /// Kinds this role reads in its areas (besides what the user created).
    fn reads(self, kind: Kind) -> bool {
        match self {
            Role::Officer => matches!(kind, Kind::PatrolNote | Kind::Meeting),
            Role::Liaison => matches!(kind, Kind::Meeting | Kind::Feedback),
            Role::Supervisor => true,
            Role::Admin => false,
        }
    }

    /// Kinds this role creates. Officers and liaisons both take citizens'
    /// feedback in the field, so both create feedback and its contact.
    fn creates(self, kind: Kind) -> bool {
        match self {
            Role::Officer | Role::Supervisor => true,
            Role::Liaison => !matches!(kind, Kind::PatrolNote),
            Role::Admin => false,
        }
    }
}

/// The user a device acts for, as the server resolved it at connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// Login name.
    pub user: String,
    /// Role.
    pub role: Role,
    /// Areas the user works in.
    pub areas: Vec<String>,
}

/// Whether a state a change sets (any string a device sent) is a decision,
/// which only a supervisor of the record's area may make.
fn is_decision(state: &str) -> bool {
    ReviewState::parse(state).is_some_and(ReviewState::is_decision)
}

/// A write rule, as refusals name it (on the wire and in the audit log
/// by [`Rule::name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// Admins manage accounts and read or change no records.
    AdminNoRecords,
    /// Nobody edits records outside their areas.
    OwnAreas,
    /// A new record names its creator, who must be the pushing user.
    Creator,
    /// Which kinds each role may create.
    KindForRole,
    /// Editing a record needs the right to read it.
    ReadToEdit,
    /// Only the author and the area's supervisors edit contact details.
    Contact,
    /// A device authors changes only under its own actor ids (its device
    /// id and some install bytes): automerge does not authenticate actors,
    /// so the server must.
    DeviceActor,
    /// Every change names the user who made it, truthfully.
    Attribution,
    /// Only supervisors of the area approve or return a record.
    Review,
    /// Review comments are only ever added: nobody deletes or overwrites a
    /// comment, the comments list or the review block, or puts a value
    /// beside them, and a new comment goes after the earlier ones.
    ReviewCommentsAppendOnly,
    /// A comment carries its real author: a new one's `by` is the pushing
    /// user, set in the change that adds it; only its author changes its
    /// other fields later, and nobody changes its `by`.
    ReviewCommentAuthor,
    /// Only a supervisor of the area changes the review state (and so moves
    /// a record out of `approved` or `returned`); anyone else may only
    /// submit a draft or returned record they created, and never set a
    /// state beside a supervisor's decision.
    ReviewState,
    /// The review block holds its state and comments, nothing else.
    ReviewFields,
    /// A record is approved only once no field holds values set
    /// differently on different devices: approving it would vouch for a
    /// value nobody chose. Judged on the record with the approving change
    /// applied, so a change that resolves the conflicts and approves in
    /// one push passes; the desk and a supervisor's tablet meet the same
    /// rule.
    UnresolvedConflict,
}

impl Rule {
    /// Every rule.
    pub const ALL: [Rule; 14] = [
        Rule::AdminNoRecords,
        Rule::OwnAreas,
        Rule::Creator,
        Rule::KindForRole,
        Rule::ReadToEdit,
        Rule::Contact,
        Rule::DeviceActor,
        Rule::Attribution,
        Rule::Review,
        Rule::ReviewCommentsAppendOnly,
        Rule::ReviewCommentAuthor,
        Rule::ReviewState,
        Rule::ReviewFields,
        Rule::UnresolvedConflict,
    ];

    /// The rule's name, as refusals carry it.
    pub fn name(self) -> &'static str {
        match self {
            Rule::AdminNoRecords => "admin_no_records",
            Rule::OwnAreas => "own_areas",
            Rule::Creator => "creator_is_user",
            Rule::KindForRole => "kind_for_role",
            Rule::ReadToEdit => "read_to_edit",
            Rule::Contact => "contact_author_or_supervisor",
            Rule::DeviceActor => "device_actor",
            Rule::Attribution => "attribution",
            Rule::Review => "review_by_area_supervisor",
            Rule::ReviewCommentsAppendOnly => "review_comments_append_only",
            Rule::ReviewCommentAuthor => "review_comment_author",
            Rule::ReviewState => "review_state_by_supervisor",
            Rule::ReviewFields => "review_known_fields",
            Rule::UnresolvedConflict => "unresolved_conflict",
        }
    }

    /// The rule a name stands for; None for one this build does not know.
    pub fn parse(name: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// A rule travels as its name, in JSON as on the wire.
impl serde::Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The rules by their old constant names.
pub mod rules {
    use super::Rule;

    /// [`Rule::AdminNoRecords`].
    pub const ADMIN_NO_RECORDS: Rule = Rule::AdminNoRecords;

    /// [`Rule::OwnAreas`].
    pub const OWN_AREAS: Rule = Rule::OwnAreas;

    /// [`Rule::Creator`].
    pub const CREATOR: Rule = Rule::Creator;

    /// [`Rule::KindForRole`].
    pub const KIND_FOR_ROLE: Rule = Rule::KindForRole;

    /// [`Rule::ReadToEdit`].
    pub const READ_TO_EDIT: Rule = Rule::ReadToEdit;

    /// [`Rule::Contact`].
    pub const CONTACT: Rule = Rule::Contact;

    /// [`Rule::DeviceActor`].
    pub const DEVICE_ACTOR: Rule = Rule::DeviceActor;

    /// [`Rule::Attribution`].
    pub const ATTRIBUTION: Rule = Rule::Attribution;

    /// [`Rule::Review`].
    pub const REVIEW: Rule = Rule::Review;

    /// [`Rule::ReviewCommentsAppendOnly`].
    pub const REVIEW_COMMENTS_APPEND_ONLY: Rule = Rule::ReviewCommentsAppendOnly;

    /// [`Rule::ReviewCommentAuthor`].
    pub const REVIEW_COMMENT_AUTHOR: Rule = Rule::ReviewCommentAuthor;

    /// [`Rule::ReviewState`].
    pub const REVIEW_STATE: Rule = Rule::ReviewState;

    /// [`Rule::ReviewFields`].
    pub const REVIEW_FIELDS: Rule = Rule::ReviewFields;

    /// [`Rule::UnresolvedConflict`].
    pub const UNRESOLVED_CONFLICT: Rule = Rule::UnresolvedConflict;
}

/// A write refused by a rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (rule {rule})")]
pub struct Refusal {
    /// The rule's name (see [`rules`]).
    pub rule: Rule,
    /// What broke it, for people.
    pub reason: String,
}

/// What an admitted write did that must be audited.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteSummary {
    /// Review decisions (approved, returned) the write made.
    pub decisions: Vec<ReviewState>,
}

impl Principal {
    /// True if `area` is one of the user's.
    pub fn works_in(&self, area: &str) -> bool {
        self.areas.iter().any(|a| a == area)
    }

    /// True if the user may read the record `header` describes. A user
    /// always reads what they created (it is on their tablet anyway);
    /// otherwise by role, kind and area. Contact details reach only their
    /// author and supervisors of the area.
    pub fn may_read(&self, header: &Header) -> bool {
        self.may_read_parts(header.kind, &header.area, &header.created_by_user)
    }

    /// [`Principal::may_read`] from the parts an index keeps.
    pub fn may_read_parts(&self, kind: Kind, area: &str, created_by: &str) -> bool {
        if self.role == Role::Admin {
            return false;
        }
        created_by == self.user || (self.works_in(area) && self.role.reads(kind))
    }

    /// Checks the changes a device just added to a record (`changes`, all
    /// already in `doc`) against the write rules. `is_new` is true when the
    /// record did not exist on the server before these changes.
    pub fn check_write(
        &self,
        header: &Header,
        is_new: bool,
        doc: &(impl Reader + ?Sized),
        changes: &[Change],
    ) -> Result<WriteSummary, Refusal> {
        let refuse = |rule: Rule, reason: String| Err(Refusal { rule, reason });
        if self.role == Role::Admin {
            return refuse(
                rules::ADMIN_NO_RECORDS,
                format!("user {} is an admin; admins do not edit records", self.user),
            );
        }
        if !self.works_in(&header.area) {
            return refuse(
                rules::OWN_AREAS,
                format!(
                    "record is in area {:?}, which is not one of user {}'s areas",
                    header.area, self.user
                ),
            );
        }
        if is_new {
            if header.created_by_user != self.user {
                return refuse(
                    rules::CREATOR,
                    format!(
                        "new record names {:?} as its creator, but was pushed by user {}",
                        header.created_by_user, self.user
                    ),
                );
            }
            if !self.role.creates(header.kind) {
                return refuse(
                    rules::KIND_FOR_ROLE,
                    format!(
                        "a {} may not create {} records",
                        self.role.name(),
                        header.kind.name()
                    ),
                );
            }
        } else if !self.may_read(header) {
            let rule = if header.kind == Kind::FeedbackContact {
                rules::CONTACT
            } else {
                rules::READ_TO_EDIT
            };
            return refuse(
                rule,
                format!(
                    "a {} may not change this {} record",
                    self.role.name(),
                    header.kind.name()
                ),
            );
        }
        let mut summary = WriteSummary::default();
        let block = ReviewBlock::read(doc);
        for change in changes {
            let named = user_of(change.message());
            if named.as_deref() != Some(self.user.as_str()) {
                return refuse(
                    rules::ATTRIBUTION,
                    format!(
                        "change {} names user {:?}, but was pushed by user {}",
                        change.hash(),
                        named.unwrap_or_default(),
                        self.user
                    ),
                );
            }
            // Every review state the change's operations set: a decision
            // counts even where a concurrent value wins.
            let edits = block.edits(doc.doc(), change);
            for edit in &edits {
                let ReviewEdit::State { to: state, .. } = edit else {
                    continue;
                };
                if let Some(decision) = ReviewState::parse(state).filter(|s| s.is_decision()) {
                    if self.role != Role::Supervisor {
                        return refuse(
                            rules::REVIEW,
                            format!(
                                "change {} sets the review state to {state}; only a supervisor of area {:?} may",
                                change.hash(),
                                header.area
                            ),
                        );
                    }
                    summary.decisions.push(decision);
                }
            }
            for edit in edits {
                self.check_review_edit(header, change, edit)?;
            }
        }
        if summary.decisions.contains(&ReviewState::Approved) {
            let standing = conflicts(doc);
            if !standing.is_empty() {
                let paths: Vec<&str> = standing.iter().map(|c| c.path.as_str()).collect();
                return refuse(
                    rules::UNRESOLVED_CONFLICT,
                    format!(
                        "resolve the conflicts first: {} {} values set differently on different devices",
                        paths.join(", "),
                        if paths.len() == 1 { "holds" } else { "hold" }
                    ),
                );
            }
        }
        Ok(summary)
    }

    /// Checks one thing a change did to the review block.
    fn check_review_edit(
        &self,
        header: &Header,
        change: &Change,
        edit: ReviewEdit,
    ) -> Result<(), Refusal> {
        let hash = change.hash();
        let refuse = |rule: Rule, reason: String| Err(Refusal { rule, reason });
        let supervisor = self.role == Role::Supervisor;
        match edit {
            ReviewEdit::BlockMade | ReviewEdit::CommentsMade => Ok(()),
            ReviewEdit::BlockReplaced => refuse(
                rules::REVIEW_COMMENTS_APPEND_ONLY,
                format!(
                    "change {hash} deletes or replaces the record's review block (or sets a value \
                     beside it); the review block and its comments are never removed"
                ),
            ),
            ReviewEdit::CommentsReplaced => refuse(
                rules::REVIEW_COMMENTS_APPEND_ONLY,
                format!(
                    "change {hash} deletes or replaces the review comments (or sets a value \
                     beside them); comments are only ever added"
                ),
            ),
            ReviewEdit::CommentRemoved => refuse(
                rules::REVIEW_COMMENTS_APPEND_ONLY,
                format!(
                    "change {hash} deletes or overwrites a review comment, or puts something \
                     that is not a comment among them; comments are only ever added"
                ),
            ),
            ReviewEdit::CommentAdded { by, appended } => {
                if by.len() != 1 || by[0] != self.user {
                    return refuse(
                        rules::REVIEW_COMMENT_AUTHOR,
                        format!(
                            "change {hash} adds a review comment by {by:?}, but was pushed by \
                             user {}; a new comment names its real author in the change that adds it",
                            self.user
                        ),
                    );
                }
                if !appended {
                    return refuse(
                        rules::REVIEW_COMMENTS_APPEND_ONLY,
                        format!(
                            "change {hash} puts a review comment before earlier ones; comments \
                             are only appended"
                        ),
                    );
                }
                Ok(())
            }
            ReviewEdit::CommentField {
                author,
                field,
                edit,
            } => {
                let theirs = author
                    .as_ref()
                    .is_some_and(|a| a.is_empty() || a.iter().any(|by| *by != self.user));
                if theirs {
                    return refuse(
                        rules::REVIEW_COMMENT_AUTHOR,
                        format!(
                            "change {hash} changes the {field} of a review comment by {:?}; \
                             only a comment's author changes it",
                            author.unwrap_or_default()
                        ),
                    );
                }
                if author.is_some() && field == "by" {
                    return refuse(
                        rules::REVIEW_COMMENT_AUTHOR,
                        format!("change {hash} changes who wrote a review comment; a comment keeps its author"),
                    );
                }
                match edit {
                    CommentFieldEdit::Put => Ok(()),
                    CommentFieldEdit::Delete => refuse(
                        rules::REVIEW_COMMENTS_APPEND_ONLY,
                        format!(
                            "change {hash} deletes the {field} of a review comment; comments \
                             are never taken apart"
                        ),
                    ),
                    CommentFieldEdit::Object => refuse(
                        rules::REVIEW_COMMENTS_APPEND_ONLY,
                        format!(
                            "change {hash} puts an object into the {field} of a review comment, \
                             whose fields hold plain values"
                        ),
                    ),
                }
            }
            ReviewEdit::OtherField(key) => refuse(
                rules::REVIEW_FIELDS,
                format!(
                    "change {hash} sets review.{key}; the review block holds only its state \
                     and comments"
                ),
            ),
            ReviewEdit::State { .. } if supervisor => Ok(()),
            ReviewEdit::State { from, to, beside } => {
                if is_decision(&to) {
                    return refuse(
                        rules::REVIEW,
                        format!(
                            "change {hash} sets the review state to {to}; only a supervisor of area {:?} may",
                            header.area
                        ),
                    );
                }
                let unchanged = from.iter().all(|state| *state == to);
                let submit = ReviewState::parse(&to) == Some(ReviewState::Submitted)
                    && header.created_by_user == self.user
                    && from.iter().all(|state| {
                        matches!(
                            ReviewState::parse(state),
                            Some(ReviewState::Draft | ReviewState::Returned)
                        )
                    });
                if !unchanged && !submit {
                    return refuse(
                        rules::REVIEW_STATE,
                        format!(
                            "change {hash} moves the review state from {} to {to}; only a \
                             supervisor of area {:?} may (the creator may only submit a draft or \
                             returned record)",
                            from.join(" / "),
                            header.area
                        ),
                    );
                }
                if let Some(decision) = beside.iter().find(|s| is_decision(s)) {
                    return refuse(
                        rules::REVIEW_STATE,
                        format!(
                            "change {hash} sets the review state to {to} beside a supervisor's \
                             decision ({decision}) it did not see; only a supervisor of area {:?} \
                             may change a decided record's state",
                            header.area
                        ),
                    );
                }
                Ok(())
            }
        }
    }
}
