// Which role each API method needs: a copy of METHOD_ROLES in
// libs/common/tai_common/auth/access.py, used only to decide which buttons to show. The API
// enforces the table itself, so a button shown by mistake still gets a 403.

export const ROLES = ['viewer', 'operator', 'approver', 'admin'];

export const METHOD_ROLES = {
  // Governor
  '/tai.v1.Governor/ProposePolicy': 'operator',
  '/tai.v1.Governor/EnforcePolicy': 'admin',
  '/tai.v1.Governor/RevokePolicy': 'admin',
  '/tai.v1.Governor/GetPolicies': 'viewer',
  '/tai.v1.Governor/GetPolicy': 'viewer',
  '/tai.v1.Governor/ListPolicyVersions': 'viewer',
  '/tai.v1.Governor/StreamPolicies': 'viewer',
  '/tai.v1.Governor/ListAuditRecords': 'admin',
  '/tai.v1.Governor/VerifyAuditLog': 'admin',
  // Namespaces: creating, changing and deleting them needs admin in every namespace ("*").
  '/tai.v1.Governor/CreateNamespace': 'admin',
  '/tai.v1.Governor/SetNamespaceQuotas': 'admin',
  '/tai.v1.Governor/DeleteNamespace': 'admin',
  '/tai.v1.Governor/ListNamespaces': 'viewer',
  '/tai.v1.Governor/GetNamespace': 'viewer',
  // Coordinator
  '/tai.v1.Coordinator/SubmitSignal': 'operator',
  '/tai.v1.Coordinator/RequestAction': 'operator',
  '/tai.v1.Coordinator/StreamActions': 'operator',
  '/tai.v1.Coordinator/AcknowledgeAction': 'operator',
  '/tai.v1.Coordinator/GetStatus': 'viewer',
  '/tai.v1.Coordinator/GetAction': 'viewer',
  '/tai.v1.Coordinator/WatchActions': 'viewer',
  '/tai.v1.Coordinator/ListActions': 'viewer',
  '/tai.v1.Coordinator/GetSignal': 'viewer',
  '/tai.v1.Coordinator/ListSignals': 'viewer',
  '/tai.v1.Coordinator/SummarizeDecisions': 'viewer',
  '/tai.v1.Coordinator/ExplainSignal': 'viewer',
  '/tai.v1.Coordinator/CreateSilence': 'operator',
  '/tai.v1.Coordinator/ExpireSilence': 'operator',
  '/tai.v1.Coordinator/ListSilences': 'viewer',
  '/tai.v1.Coordinator/GetSilence': 'viewer',
  '/tai.v1.Coordinator/ApproveAction': 'approver',
  '/tai.v1.Coordinator/RejectAction': 'approver',
  '/tai.v1.Coordinator/SimulatePolicy': 'operator',
  // Scheduler (others' tasks and schedules also need admin: checked by the Scheduler)
  '/tai.v1.Scheduler/SubmitTask': 'operator',
  '/tai.v1.Scheduler/CancelTask': 'operator',
  '/tai.v1.Scheduler/GetTaskStatus': 'viewer',
  '/tai.v1.Scheduler/ListTasks': 'viewer',
  '/tai.v1.Scheduler/StreamTaskUpdates': 'viewer',
  '/tai.v1.Scheduler/PauseSchedule': 'operator',
  '/tai.v1.Scheduler/ResumeSchedule': 'operator',
  '/tai.v1.Scheduler/TriggerSchedule': 'operator',
  '/tai.v1.Scheduler/BackfillSchedule': 'operator',
  '/tai.v1.Scheduler/ListUpcomingRuns': 'viewer',
};

let currentRole = null;

/** Sets the caller's role ("admin" when authentication is off; null when unknown). */
export function setRole(role) {
  currentRole = ROLES.includes(role) ? role : null;
}

export function currentRoleName() {
  return currentRole;
}

/** The highest role a `roles` claim grants (a list of names, or a space-separated string), as
 * the API reads it. */
export function roleFromClaim(claim) {
  const names = typeof claim === 'string' ? claim.split(/\s+/) : Array.isArray(claim) ? claim : [];
  let best = -1;
  for (const name of names) best = Math.max(best, ROLES.indexOf(String(name).trim().toLowerCase()));
  return best >= 0 ? ROLES[best] : null;
}

/** The role a token's payload grants in `namespace`, as the API reads it: the namespaces claim
 * (`claimName`, default tai_namespaces: an object {namespace: role} or a list of
 * "namespace:role" strings, "*" for every namespace) grants the higher of the namespace's own
 * role and the "*" one; a token without that claim holds only "default", with its `roles`
 * claim's role. */
export function roleInNamespace(payload, namespace, claimName = 'tai_namespaces') {
  const claim = payload ? payload[claimName] : undefined;
  if (claim === undefined || claim === null) {
    return namespace === 'default' ? roleFromClaim(payload && payload.roles) : null;
  }
  let pairs = [];
  if (Array.isArray(claim)) {
    pairs = claim.map((item) => {
      const text = String(item);
      const colon = text.lastIndexOf(':');
      return [text.slice(0, Math.max(colon, 0)), text.slice(colon + 1)];
    });
  } else if (typeof claim === 'object') {
    pairs = Object.entries(claim);
  }
  let best = -1;
  for (const [name, role] of pairs) {
    if (name !== namespace && name !== '*') continue;
    best = Math.max(best, ROLES.indexOf(roleFromClaim(Array.isArray(role) ? role : String(role))));
  }
  return best >= 0 ? ROLES[best] : null;
}

/** Whether the caller's role may call `method` (methods not in the table: admins only). */
export function can(method) {
  if (!currentRole) return false;
  const needed = METHOD_ROLES[method] || 'admin';
  return ROLES.indexOf(currentRole) >= ROLES.indexOf(needed);
}
