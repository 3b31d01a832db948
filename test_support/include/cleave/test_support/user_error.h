// The message of the UserError a call throws, for tests that check it names what is wrong.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "cleave/core/error.h"

namespace cleave::test_support {

// What `call` throws as a UserError; a test failure (and "") when it throws none. Other
// exceptions pass through.
template <typename Call>
std::string UserErrorOf(Call&& call) {
  try {
    call();
  } catch (const UserError& error) {
    return error.what();
  }
  ADD_FAILURE() << "no UserError";
  return "";
}

}  // namespace cleave::test_support
