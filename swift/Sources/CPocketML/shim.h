// The header lives with the C++ core; -Xcc -I<repo>/csrc/include finds it.
#include <pocketml/pocketml.h>
