# ferry: convenience targets over Meson/Ninja (the C build) and the guest
# image build. `make demo` is the README's first command, `make test` the
# second.
BUILD ?= build

.PHONY: all ferry guest deps demo test bench clean

all: ferry guest

deps:
	scripts/install-deps

$(BUILD)/build.ninja:
	meson setup $(BUILD)

ferry: $(BUILD)/build.ninja
	ninja -C $(BUILD)

guest:
	guest/build.sh

demo: deps all
	scripts/demo

test: deps all
	tests/run

bench: all
	bench/run

clean:
	rm -rf $(BUILD)
