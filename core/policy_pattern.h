/* Lua pattern matching with a bounded cost, for policy states.
 *
 * LuaJIT's string.find/match/gmatch/gsub run Lua patterns in one C call that no hook can
 * interrupt, and a backtracking pattern such as ("a?"):rep(40) .. ("a"):rep(40) against
 * ("a"):rep(40) takes 2^40 steps: one request would pin its worker for hours. These
 * replacements implement the same pattern language (Lua 5.1 as LuaJIT 2.1 runs it: the
 * differential test spec/unit/test_policy_pattern.c compares them with LuaJIT's own) but
 * count every matcher step against the policy call's instruction budget: a step is one
 * instruction, so --policy-max-instructions bounds the time a pattern can take, exactly
 * as it bounds Lua code. A call that runs out raises, and the budget stays spent (the
 * policy's pcall cannot catch it, see core/policy.c).
 *
 * Matcher recursion is bounded too (PATTERN_MAX_DEPTH, "pattern too complex"), so the C
 * stack a match uses is bounded whatever the pattern. */
#ifndef TOKENGATE_POLICY_PATTERN_H
#define TOKENGATE_POLICY_PATTERN_H

#include <lua.h>
#include <stdint.h>

#define PATTERN_MAX_CAPTURES 32
#define PATTERN_MAX_DEPTH 200

/* Where the steps go: *spent is the running call's instruction count, *limit its budget.
 * Both belong to the caller and must outlive the functions registered below. */
typedef struct pattern_budget {
    uint64_t *spent;
    const uint64_t *limit;
} pattern_budget;

/* Sets find, match, gmatch and gsub in the table at the top of L's stack to the bounded
 * versions, charging budget (a light userdata upvalue; not owned). */
void policy_pattern_register(lua_State *L, pattern_budget *budget);

#endif
