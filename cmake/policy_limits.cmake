# Writes OUTPUT, the Lua module tokengate.limits, from HEADER (core/policy_limits.h): each
# `#define POLICY_LIMIT_NAME n` becomes limits.name = n and each
# `#define POLICY_DEFAULT_NAME n` defaults.name = n, with the line's comment. The file is
# written only when its text changes (so what embeds it is not rebuilt for nothing), and
# it is kept in the source tree: busted runs the kit from there, and it is installed with
# the kit.
# Usage: cmake -DHEADER=... -DOUTPUT=... -P policy_limits.cmake
file(STRINGS "${HEADER}" lines REGEX "^#define POLICY_(LIMIT|DEFAULT)_")
set(limits "")
set(defaults "")
foreach(line ${lines})
  if(NOT line MATCHES "^#define POLICY_(LIMIT|DEFAULT)_([A-Z0-9_]+)[ ]+([0-9]+)[ ]*(/\\*[ ]*(.*[^ ])[ ]*\\*/)?[ ]*$")
    message(FATAL_ERROR "${HEADER}: not a plain integer limit: ${line}")
  endif()
  set(kind "${CMAKE_MATCH_1}")
  string(TOLOWER "${CMAKE_MATCH_2}" key)
  set(entry "  ${key} = ${CMAKE_MATCH_3},")
  if(CMAKE_MATCH_5)
    string(APPEND entry " -- ${CMAKE_MATCH_5}")
  endif()
  if(kind STREQUAL "LIMIT")
    string(APPEND limits "${entry}\n")
  else()
    string(APPEND defaults "${entry}\n")
  endif()
endforeach()
if(limits STREQUAL "" OR defaults STREQUAL "")
  message(FATAL_ERROR "${HEADER}: no POLICY_LIMIT_ or POLICY_DEFAULT_ definitions found")
endif()
set(text "-- tokengate.limits: the limits a policy is held to, for the gateway and the busted kit.
-- Generated from core/policy_limits.h by cmake/policy_limits.cmake (every build): do not
-- edit; change the header.
return {
limits = {
${limits}},
defaults = {
${defaults}},
}
")
if(EXISTS "${OUTPUT}")
  file(READ "${OUTPUT}" old)
else()
  set(old "")
endif()
if(NOT old STREQUAL text)
  file(WRITE "${OUTPUT}" "${text}")
endif()
