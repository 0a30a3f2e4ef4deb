// A shared library that is not a tessera plugin.
extern "C" int not_a_plugin_answer() { return 42; }
